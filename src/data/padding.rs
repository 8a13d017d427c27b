//! Token sequences as the padded id and mask tensors a batched forward pass takes.

use tch::{Device, Tensor};

/// Right-pads sequences: ids and the mask of real tokens, both [rows, longest].
pub fn right_pad(rows: &[&[i64]], device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in rows {
        let pad = width - row.len();
        ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, pad)));
        mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, pad)));
    }
    (
        to_tensor(ids, rows.len(), device),
        to_tensor(mask, rows.len(), device),
    )
}

fn to_tensor(values: Vec<i64>, rows: usize, device: Device) -> Tensor {
    Tensor::from_slice(&values)
        .reshape([rows as i64, -1])
        .to_device(device)
}
