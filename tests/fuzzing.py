"""What the fuzzed sweeps share: the `fuzz` decorator (hypothesis' given, with the run's seed)
and `outcome`, which lets a call succeed or fail only with a clear error from the course's code.

Every example of a run is drawn from FUZZ_SEED (conftest.py picks a new one per run and prints it
in the header); a failing example is printed with it, and FUZZ_SEED=N repeats the run.
"""

import functools
import os
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, note, seed, settings

SEED = int(os.environ.get("FUZZ_SEED") or 0)
ALLOWED = (TypeError, ValueError, FileNotFoundError)


def fuzz(**strategies):
    """@given(**strategies), seeded with FUZZ_SEED, noting the seed in a failure's report. A
    function-scoped fixture (tmp_path, ...) is shared by a test's examples on purpose."""
    def decorate(test):
        @functools.wraps(test)
        def with_seed(*args, **kwargs):
            note(f"FUZZ_SEED={SEED} repeats this run")
            return test(*args, **kwargs)

        checks = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
        return seed(SEED)(settings(suppress_health_check=checks)(given(**strategies)(with_seed)))
    return decorate


def outcome(call, ours, allowed=ALLOWED, also=()):
    """call()'s result, or the exception it raised if that is of an `allowed` type (exactly)
    and was raised by a `raise` statement in one of the files named in `ours`; anything else
    fails the test. `also`: (file name, words) pairs of errors from elsewhere that are clear
    enough to pass. Each outcome is counted as a hypothesis event ("pc.generate: ok")."""
    label = ".".join(call.__code__.co_names) or "call"  # e.g. "pc.generate"
    try:
        result = call()
    except Exception as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = Path(frame.filename).name
        if type(e) in allowed and where in ours and frame.line.lstrip().startswith("raise"):
            event(f"{label}: {type(e).__name__}")  # --hypothesis-show-statistics counts them
            return e  # one of the checks: not a TypeError of an attribute access, say
        if isinstance(e, allowed) and any(where == name and words in str(e)
                                          for name, words in also):
            event(f"{label}: {type(e).__name__} ({where})")
            return e
        raise AssertionError(f"{type(e).__name__} raised in {where}:{frame.lineno}, not by the "
                             f"course's checks: {e}") from e
    event(f"{label}: ok")
    return result


def failed(result):
    return isinstance(result, BaseException)


def table_tests(cases):
    """The tests of a table of mistakes, rows (id, call(ctx), exception type, words): each call
    raises exactly its type, with every one of its words in the message; ids are unique. A test
    file assigns them to its own names: `test_a, test_b = table_tests(CASES)`."""
    @pytest.mark.parametrize("call,error,words", [c[1:] for c in cases],
                             ids=[c[0] for c in cases])
    def test_a_mistake_gets_a_clear_message(ctx, call, error, words):
        with pytest.raises(Exception) as info:
            call(ctx)
        assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
        for word in words:
            assert word in str(info.value), f"{word!r} not in: {info.value}"

    def test_every_case_has_its_own_id():
        names = [c[0] for c in cases]
        assert len(names) == len(set(names))

    return test_a_mistake_gets_a_clear_message, test_every_case_has_its_own_id
