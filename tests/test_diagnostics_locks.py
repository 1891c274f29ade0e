"""Lock names and lock owners in the dump and the deadlock report, on every
supported CPython (issue #16): the engine's key for a lock wait (the
semaphore, or on 3.13+ the PyMutex a parking-lot waiter parked on) matched
with the lock objects the waiting frame sees, and owners only where one is
recorded (RLock everywhere, Lock on 3.11/3.12, the joined thread).

Acceptable: no name or no owner where none can be known.  Unacceptable: a
wrong name, a guessed owner, a cycle through a Lock on 3.13+ (its holder is
stored nowhere).
"""
import re

from support.programs import WAIT, lock_order_program
from support.snippets import check_ok, run_hooked
from interpose._core import _compat

CYCLE = (r"lock cycle:\n"
         r"  coroutine \d+ 'first' waits for lock 'b' .* in first\(\),"
         r" held by coroutine \d+ 'second'\n"
         r"  coroutine \d+ 'second' waits for lock 'a' .* in second\(\),"
         r" held by coroutine \d+ 'first'\n")


def _deadlock(kind):
    proc = run_hooked(lock_order_program(kind),
                      env={"INTERPOSE_DEADLOCK": "exit"}, timeout=WAIT)
    assert proc.returncode == 70, proc
    return proc.stderr


def test_rlock_order_deadlock_shows_the_cycle_on_every_version():
    err = _deadlock("RLock")
    assert re.search(CYCLE, err), err
    assert re.search(r"'first' parked: lock 'b' \(semaphore 0x[0-9a-f]+\) in"
                     r" first\(\), held by coroutine \d+ 'second'\n", err), err
    # The main coroutine joins 'first', which cannot end: that thread is
    # the owner of the join on every version.
    assert re.search(r"'main' \(main\) parked: join thread 'first': .*,"
                     r" held by coroutine \d+ 'first'\n", err), err


def test_lock_order_deadlock_names_the_locks_and_never_guesses_owners():
    err = _deadlock("Lock")
    assert re.search(r"'first' parked: lock 'b' \(semaphore 0x[0-9a-f]+\) in first\(\)", err), err
    assert re.search(r"'second' parked: lock 'a' \(semaphore 0x[0-9a-f]+\) in second\(\)", err), err
    if _compat.LOCK_OWNERS_KNOWN:  # 3.11, 3.12: sem_trywait names the taker
        assert re.search(CYCLE, err), err
    else:  # 3.13+: a PyMutex records no holder
        assert "lock cycle:" not in err
        assert "no lock cycle shown: from CPython 3.13 a threading.Lock" in err
        assert not re.search(r"parked: lock '[ab]' .*held by", err), err


def test_dump_names_the_lock_and_the_rlock_owner_from_inside():
    out = check_ok(run_hooked("""
        import io, threading
        import interpose
        gate = threading.Lock(); gate.acquire()
        guard = threading.RLock(); guard.acquire(); guard.acquire()
        def at_gate(): gate.acquire()
        def at_guard():
            with guard: pass
        ts = [threading.Thread(target=f, name=f.__name__, daemon=True)
              for f in (at_gate, at_guard)]
        for t in ts: t.start()
        interpose.sleep(0)  # every runnable coroutine runs until it parks
        buf = io.StringIO()
        interpose.dump(buf)
        print(buf.getvalue())
        gate.release(); guard.release(); guard.release()
        for t in ts: t.join()
        print("joined")
    """))
    text = "\n".join(out)
    assert re.search(r"'at_gate' parked: lock 'gate' \(semaphore 0x[0-9a-f]+\)"
                     r" in at_gate\(\)", text), text
    assert re.search(r"'at_guard' parked: lock 'guard' \(semaphore 0x[0-9a-f]+\)"
                     r" in at_guard\(\), held by coroutine 1 'main'\n", text), text
    if not _compat.LOCK_OWNERS_KNOWN:
        assert not re.search(r"'at_gate' parked: .*held by", text), text
    assert out[-1] == "joined"


def test_lock_not_visible_from_the_waiting_frame_has_no_name():
    # The waiter reaches its lock through a list, which the dump does not
    # search: no name, and never another visible lock's, although 'decoy'
    # is locked as well.
    out = check_ok(run_hooked("""
        import io, threading
        import interpose
        decoy = threading.Lock(); decoy.acquire()
        def make():
            box = [threading.Lock()]; box[0].acquire()
            return (lambda: box[0].acquire()), box[0].release
        take, release = make()
        t = threading.Thread(target=take, name="blind", daemon=True)
        t.start()
        interpose.sleep(0)
        buf = io.StringIO()
        interpose.dump(buf)
        print(buf.getvalue())
        release(); t.join()
    """))
    text = "\n".join(out)
    assert re.search(r"'blind' parked: lock \(semaphore 0x[0-9a-f]+\) in"
                     r" <lambda>\(\)", text), text
