# rlvr's test harness, run as `python -c <this file>` inside the wasm sandbox.
# It reads one JSON job from stdin: {"nonce", "code", "tests": [...], "entry_point",
# "setup"}, runs the submitted code, then each test, and prints one result line:
#     <nonce> {"passed": k, "total": n, "error": "..."}
# The host accepts a result only from the final line carrying the nonce, which the
# submission must never reach. A policy trained against this grader will look for any
# way to be paid without solving the task; the defences (each has a test in
# tests/sandbox.rs):
# - everything the harness relies on (the real exit, stdout's write, type, len, ...)
#   is captured before untrusted code runs, so patching those later changes nothing,
#   and the result line is formatted by hand, not by the json module;
# - an audit hook (CPython) forbids frame and object-graph introspection (tracebacks'
#   frames, sys._getframe, gc.get_objects, settrace/setprofile), so the nonce, the
#   test list and the report function stay out of reach;
# - exits (sys.exit, os._exit, SystemExit) raise while untrusted code runs, and the
#   harness ends the process itself right after its report (MicroPython, which cannot,
#   has its exit handler dropped first), so nothing prints a line after it; the host
#   reads only the last line, and only from a process that exited normally;
# - each test runs in a fresh namespace holding the original builtins (bound as
#   globals, so even a patch that undoes itself cannot reach the test), the task's
#   trusted setup code and the entry point;
# - the standard library's modules and builtins are snapshotted (by identity) and any
#   change after the submission or a test fails the job;
# - the entry point's results must be plain builtin values (checked by type
#   identity), so an object whose __eq__ always says yes does not pass.
# Known limits: classes are guarded only in the commonly used modules listed below.
# MicroPython has no audit hooks or frames, and its uctypes module reads and writes
# the interpreter's memory, so a determined submission can read the job (tests,
# nonce) there: grade untrusted policies with CPython where that matters.
# Written for CPython 3.12 and MicroPython.
import sys
import json


def _rlvr_main():
    job = json.loads(sys.stdin.read())
    nonce = job["nonce"]
    code = job["code"]
    tests = tuple(job["tests"])
    entry_point = job.get("entry_point")
    setup = job.get("setup") or ""
    del job
    write = sys.stdout.write
    flush = getattr(sys.stdout, "flush", None) or (lambda: None)
    at_exit = getattr(sys, "atexit", None)
    _type, _len, _all, _any, _str, _callable, _exec, _ord = type, len, all, any, str, callable, exec, ord
    _BaseException = BaseException
    try:
        import os
        real_exit = os._exit
    except Exception:
        real_exit = None

    def json_string(text):
        # By hand: json.dumps goes through module state (json._default_encoder) that
        # the submission can change. Builtin str and int methods cannot be patched.
        out = '"'
        for ch in text:
            if ch == '"' or ch == "\\":
                out += "\\" + ch
            elif 32 <= _ord(ch) < 127:
                out += ch
            else:
                out += "?"
        return out + '"'

    def report(passed, total, error):
        if at_exit is not None:
            # MicroPython has no os._exit: drop any exit handler the submission
            # registered, so that nothing prints after this line.
            try:
                at_exit(None)
            except _BaseException:
                pass
        try:
            flush()
        except _BaseException:
            pass  # MicroPython's stdout may refuse flush; the write below still lands
        result = '{"passed": ' + _str(passed) + ', "total": ' + _str(total) + ', "error": ' + json_string(error) + "}"
        write("\n" + nonce + " " + result + "\n")
        try:
            flush()
        except _BaseException:
            pass
        if real_exit is not None:
            real_exit(0)

    class Escape(Exception):
        pass

    def describe(error):
        # Only builtin exceptions with plain arguments are rendered: a guest-defined
        # __str__ or __repr__ never runs inside the harness.
        name = _type(error).__name__
        args = getattr(error, "args", ())
        if _type(error) is Escape:
            return name + ": " + args[0]
        if getattr(_type(error), "__module__", "builtins") == "builtins" and _all(_type(a) is _str or _type(a) is int for a in args):
            text = _str(error)[:200]
            return name + ": " + text if text else name
        return name

    import builtins
    plain = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset)

    def is_plain(value, depth=0):
        kind = _type(value)
        if depth > 50 or not _any(kind is p for p in plain):
            return False
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            return _all(is_plain(v, depth + 1) for v in value)
        if kind is dict:
            return _all(is_plain(k, depth + 1) and is_plain(v, depth + 1) for k, v in value.items())
        return True

    def refuse_exit(*args, **kwargs):
        raise Escape("exiting the process is not allowed here")

    for module_name, attribute in (("sys", "exit"), ("os", "_exit"), ("posix", "_exit"), ("builtins", "exit"), ("builtins", "quit")):
        try:
            setattr(__import__(module_name), attribute, refuse_exit)
        except Exception:
            pass
    if hasattr(sys, "_getframe"):
        del sys._getframe

    # Modules tests commonly use, imported before the snapshot so they are guarded
    # too, down to the attributes of their classes (random.Random.randint, ...).
    common = ("math", "random", "string", "re", "copy", "collections", "itertools", "functools", "heapq", "typing", "fractions", "hashlib")
    for name in common:
        try:
            __import__(name)
        except Exception:
            pass
    modules = {name: module for name, module in sys.modules.items() if module is not None}
    volatile = ("last_exc", "last_type", "last_value", "last_traceback", "exc_info")

    def contents(module):
        try:
            return dict(vars(module))
        except Exception:
            return {}

    snapshot = {name: contents(module) for name, module in modules.items() if name != "__main__"}
    snapshot["builtins"] = contents(builtins)
    # MicroPython has no vars(), and listing all its builtins costs a quarter of a
    # job: the ones tests call are taken by name.
    original_builtins = snapshot["builtins"] or {
        name: getattr(builtins, name) for name in (
            "abs", "all", "any", "bool", "bytes", "callable", "chr", "dict", "divmod", "enumerate", "filter",
            "float", "frozenset", "getattr", "hasattr", "hash", "int", "isinstance", "issubclass", "iter",
            "len", "list", "map", "max", "min", "next", "ord", "pow", "print", "range", "repr", "reversed",
            "round", "set", "sorted", "str", "sum", "tuple", "type", "zip")
        if hasattr(builtins, name)}
    classes = []
    for name in common:
        for value in contents(modules.get(name)).values() if name in modules else ():
            if isinstance(value, type):
                classes.append((value, contents(value)))

    def class_changed():
        for cls, saved in classes:
            now = contents(cls)
            if _len(now) != _len(saved) or _any(now.get(k, saved) is not v for k, v in saved.items()):
                return True
        return False

    def state_changed():
        for name, module in modules.items():
            if sys.modules.get(name) is not module:
                return True
        for name, saved in snapshot.items():
            now = contents(builtins if name == "builtins" else modules[name])
            for key, value in saved.items():
                if now.get(key, saved) is not value and not (name == "sys" and key in volatile):
                    return True
        return class_changed()

    denied = ("object.__getattr__", "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
              "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__", "function.__new__",
              "ctypes.", "sys._getframemodulename", "cpython.", "sys.addaudithook")

    def audit(event, args):
        if event.startswith(denied):
            raise RuntimeError("not allowed in the sandbox: " + event)

    if hasattr(sys, "addaudithook"):
        sys.addaudithook(audit)

    namespace = {"__name__": "__main__"}
    try:
        _exec(code, namespace)
    except _BaseException as error:
        report(0, _len(tests), "the solution raised " + describe(error))
        return
    if state_changed():
        report(0, _len(tests), "the solution modified the standard library or builtins")
        return
    function = None
    if entry_point:
        function = namespace.get(entry_point)
        if not _callable(function):
            report(0, _len(tests), "the solution defines no function " + entry_point)
            return

    def guarded(*args, **kwargs):
        result = function(*args, **kwargs)
        if not is_plain(result):
            raise TypeError("returned a " + _type(result).__name__ + ", not a plain builtin value")
        return result

    test_globals = {name: value for name, value in original_builtins.items() if name[:2] != "__"}
    test_globals["__name__"] = "__main__"
    test_globals["__builtins__"] = dict(original_builtins)
    passed = 0
    first_error = ""
    for test in tests:
        # Without an entry point the tests need the submission's names; with one they
        # get only the trusted setup and the guarded function.
        # The tests' names of builtins are bound to the originals, as globals (and as a
        # private __builtins__ for CPython), so a patch of the builtins module that
        # undoes itself before the check above cannot reach them.
        scope = dict(test_globals) if entry_point else namespace
        try:
            if entry_point:
                _exec(setup, scope)
                scope[entry_point] = guarded
            _exec(test, scope)
            if state_changed():
                raise Escape("the standard library or builtins were modified")
            passed += 1
        except _BaseException as error:
            if not first_error:
                first_error = describe(error)
    report(passed, _len(tests), first_error)


_rlvr_main()
