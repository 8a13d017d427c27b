# rlvr's test harness, run as `python -c <this file>` inside the wasm sandbox.
# It reads one JSON job from stdin: {"nonce", "code", "tests": [...], "entry_point"},
# runs the submitted code, then each test, and prints one result line:
#     <nonce> {"passed": k, "total": n, "error": "..."}
# The host accepts a result only from a final line carrying the nonce, which the
# submission never sees: it is read before the code runs and kept in a closure.
# Defences against a policy that games the grader rather than solving the task:
# - exiting early (sys.exit, os._exit, SystemExit) cannot pass: no result line, and
#   the exits are replaced by functions that raise while untrusted code runs;
# - frame introspection to find the nonce: sys._getframe is removed first;
# - rebinding builtins (abs, isinstance, ...) that the tests rely on: builtins are
#   snapshotted before the code runs and any change fails the job;
# - returning an object whose __eq__ always says True: the entry point's results
#   must be built from plain builtin types.
# Written for both CPython 3.12 and MicroPython.
import sys
import json


def _rlvr_main():
    job = json.loads(sys.stdin.read())
    nonce = job["nonce"]
    write = sys.stdout.write
    flush = getattr(sys.stdout, "flush", None) or (lambda: None)

    def report(passed, total, error):
        try:
            flush()
        except Exception:
            pass  # MicroPython's stdout may refuse flush; the write below still lands
        write("\n" + nonce + " " + json.dumps({"passed": passed, "total": total, "error": error}) + "\n")

    import builtins
    plain = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset)

    def is_plain(value, depth=0):
        if depth > 50 or type(value) not in plain:
            return False
        if type(value) in (list, tuple, set, frozenset):
            return all(is_plain(v, depth + 1) for v in value)
        if type(value) is dict:
            return all(is_plain(k, depth + 1) and is_plain(v, depth + 1) for k, v in value.items())
        return True

    class Escape(Exception):
        pass

    def refuse_exit(*args, **kwargs):
        raise Escape("exiting the process is not allowed here")

    for module_name, attribute in (("sys", "exit"), ("os", "_exit"), ("posix", "_exit"), ("builtins", "exit"), ("builtins", "quit")):
        try:
            setattr(__import__(module_name), attribute, refuse_exit)
        except Exception:
            pass
    if hasattr(sys, "_getframe"):
        del sys._getframe
    snapshot = {name: getattr(builtins, name) for name in dir(builtins)}

    def builtins_changed():
        names = set(dir(builtins))
        if names != set(snapshot):
            return True
        return any(getattr(builtins, name) is not value for name, value in snapshot.items())

    tests = job["tests"]
    entry_point = job.get("entry_point")
    namespace = {"__name__": "__main__"}
    try:
        exec(job["code"], namespace)
    except BaseException as error:
        report(0, len(tests), "the solution raised " + type(error).__name__ + ": " + str(error)[:200])
        return
    if builtins_changed():
        report(0, len(tests), "the solution modified builtins")
        return
    if entry_point:
        function = namespace.get(entry_point)
        if not callable(function):
            report(0, len(tests), "the solution defines no function " + entry_point)
            return

        def guarded(*args, **kwargs):
            result = function(*args, **kwargs)
            if not is_plain(result):
                raise TypeError("returned a " + type(result).__name__ + ", not a plain builtin value")
            return result

        namespace[entry_point] = guarded
    passed = 0
    first_error = ""
    for test in tests:
        try:
            exec(test, namespace)
            if builtins_changed():
                raise Escape("builtins were modified")
            passed += 1
        except BaseException as error:
            if not first_error:
                first_error = type(error).__name__ + ": " + str(error)[:200]
    report(passed, len(tests), first_error)


_rlvr_main()
