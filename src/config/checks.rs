//! Range checks that run while a value is deserialised, so that a bad value is
//! reported with its key path and line like any other parse error.

use serde::{Deserialize, Deserializer, de::Error};

pub fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(d)?;
    if value == 0 {
        return Err(D::Error::custom("must be at least 1"));
    }
    Ok(value)
}

pub fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(value.is_finite() && value > 0.0) {
        return Err(D::Error::custom(format!(
            "must be a finite number > 0, got {value}"
        )));
    }
    Ok(value)
}

pub fn non_negative_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(D::Error::custom(format!(
            "must be a finite number >= 0, got {value}"
        )));
    }
    Ok(value)
}

pub fn optional_non_negative_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        Some(value) if !(value.is_finite() && value >= 0.0) => Err(D::Error::custom(format!(
            "must be a finite number >= 0, got {value}"
        ))),
        other => Ok(other),
    }
}

pub fn unit_interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&value) {
        return Err(D::Error::custom(format!("must lie in [0, 1], got {value}")));
    }
    Ok(value)
}
