"""Running out of memory or memory mappings: spawn fails with one clear
ENOMEM naming the limit (a huge stack, a size near SIZE_MAX, RLIMIT_AS,
vm.max_map_count), and the process recovers once coroutines finish.
"""
import errno
import json

import pytest

import interpose
from support.snippets import run_snippet
from support.probes import (MAX_MAP_COUNT, exhausts_max_map_count,
                            live_thread_states)


MiB = 1024 * 1024


def _map_count():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _assert_clear_spawn_error(exc):
    assert exc.errno == errno.ENOMEM
    message = str(exc)
    assert "memory mappings" in message, message
    assert "vm.max_map_count" in message, message


@pytest.mark.timeout(30)
def test_spawn_huge_stack_fails_with_clear_enomem():
    # 1 << 60 bytes exceeds every 64-bit user address space (1 << 46 still
    # succeeds on x86-64: MAP_NORESERVE reserves no memory).
    interpose.current()
    base_tstates = live_thread_states()
    base_alive = interpose.statistics().coroutines_alive
    maps = _map_count()
    with pytest.raises(OSError) as info:
        interpose.spawn(lambda: None, stack_size=1 << 60, name="huge")
    _assert_clear_spawn_error(info.value)
    assert _map_count() == maps
    assert live_thread_states() == base_tstates
    assert interpose.statistics().coroutines_alive == base_alive
    assert interpose.run(lambda: interpose.spawn(lambda: "ok").join()) == "ok"
    assert interpose.statistics().coroutines_alive == base_alive


@pytest.mark.parametrize(
    "size",
    [2**64 - 1, 2**64 - 4096, 2**64, 2**64 + 16384],
    ids=["2^64-1", "2^64-4096", "2^64", "2^64+16K"],
)
@pytest.mark.timeout(60)
def test_spawn_stack_size_near_or_beyond_size_max_fails_cleanly(size):
    # Acceptable: OSError(ENOMEM) with the clear message, or ValueError /
    # OverflowError naming stack_size.  Unacceptable: a crash (size_t
    # overflow when rounding up), an unexplained EINVAL, or a coroutine
    # that silently gets another stack size (the value wrapped modulo 2^64).
    r = run_snippet(
        f"""
        import interpose
        def f():
            return "ran"
        try:
            coro = interpose.spawn(f, stack_size={size}, name="edge")
        except OSError as e:
            print("OSError", e.errno, e, flush=True)
        except (ValueError, OverflowError) as e:
            print(type(e).__name__, e, flush=True)
        else:
            print("spawned", coro.join(), flush=True)
        print("healthy", interpose.spawn(f).join(), flush=True)
        """
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    first = r.stdout.splitlines()[0]
    assert not first.startswith("spawned"), first
    if first.startswith("OSError"):
        assert first.startswith(f"OSError {errno.ENOMEM} "), first
        assert "vm.max_map_count" in first, first
    else:
        assert "stack_size" in first, first
    assert "healthy ran" in r.stdout


@pytest.mark.timeout(120)
def test_spawn_until_rlimit_as_exhausted_fails_cleanly_and_recovers():
    # RLIMIT_AS makes mmap fail with ENOMEM, as running out of memory or of
    # mappings does, without touching machine-wide sysctls.
    r = run_snippet(
        """
        import errno, json, resource, psutil, interpose

        def work(i):
            interpose.sleep(0)
            return i * 2

        def main():
            interpose.sleep(0)
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            room = psutil.Process().memory_info().vms + 64 * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (room, hard))
            coros, error = [], None
            try:
                while len(coros) < 100_000:
                    coros.append(interpose.spawn(work, len(coros)))
            except OSError as e:
                error = e
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            results = [c.join() for c in coros]
            assert results == [2 * i for i in range(len(coros))]
            after = interpose.spawn(work, 21).join()
            return {
                "spawned": len(coros), "errno": error and error.errno,
                "message": error and str(error), "after": after,
            }

        report = interpose.run(main)
        report["alive"] = interpose.statistics().coroutines_alive
        print(json.dumps(report))
        """
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert 0 < report["spawned"] < 100_000
    assert report["errno"] == errno.ENOMEM
    assert "memory mappings" in report["message"]
    assert "vm.max_map_count" in report["message"]
    assert report["after"] == 42
    assert report["alive"] == 0


@pytest.mark.slow
@exhausts_max_map_count
@pytest.mark.timeout(240)
def test_spawn_until_max_map_count_fails_cleanly_and_recovers():
    # The real limit (two mappings per coroutine with the PROT_NONE guards
    # forced here; guard markers would share one mapping among all the
    # stacks, native/stack.c), reached without changing it; each
    # parked-before-start coroutine costs only a few KiB.
    r = run_snippet(
        """
        import json, interpose

        def work(i):
            return i

        def main():
            coros, error = [], None
            try:
                while len(coros) < 1_000_000:
                    coros.append(interpose.spawn(work, len(coros)))
            except OSError as e:
                error = e
            results = [c.join() for c in coros]
            assert results == list(range(len(coros)))
            return {
                "spawned": len(coros), "errno": error and error.errno,
                "message": error and str(error),
                "after": interpose.spawn(work, 7).join(),
            }

        report = interpose.run(main)
        report["alive"] = interpose.statistics().coroutines_alive
        print(json.dumps(report))
        """,
        timeout=200,
        env={"INTERPOSE_STACK_GUARD": "mprotect"},
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert MAX_MAP_COUNT // 4 < report["spawned"] <= MAX_MAP_COUNT // 2
    assert report["errno"] == errno.ENOMEM
    assert f"vm.max_map_count={MAX_MAP_COUNT}" in report["message"]
    assert report["after"] == 7
    assert report["alive"] == 0
