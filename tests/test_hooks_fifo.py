"""A blocking open() of a FIFO (native/hooks_fifo.c) parks the coroutine
until the other end is opened, so two Python threads can meet on a FIFO
under `interpose run` as they do plainly.  Each script runs under plain
python and under `python -m interpose run`; outputs and exit statuses
must match.

Regression: CPython 3.14's test_logging
RotatingFileHandlerTest.test_should_not_rollover_named_pipe hung under
interpose (found by scripts/cpython-oracle on 3.14): the main thread's
open() for writing blocked the OS thread in the kernel, and the thread that
was to open the reading end, a coroutine on that same OS thread, never ran.
Acceptable: the same lines as plain Python.  Unacceptable: a hang (the
timeout), another exception, an fd left non-blocking, an fd of the check
left open (the next os.pipe() then gets other numbers).
"""
import pytest

from support.snippets import assert_script_same

pytestmark = pytest.mark.slow

PRELUDE = """
    import errno, os, signal, subprocess, sys, tempfile, threading
    d = tempfile.mkdtemp(dir=os.getcwd())  # in pytest's tmp_path
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)

    def in_thread(fn):
        t = threading.Thread(target=fn)
        t.start()
        return t

    # Not the fd's number: which of two threads' opens takes the lower one
    # depends on their timing, plainly too (the kernel reserves the number
    # before it waits for the other end).
    def describe(fd):
        return f"blocking={os.get_blocking(fd)}"
"""


def _same(tmp_path, body):
    plain, _ = assert_script_same(tmp_path, PRELUDE + body, timeout=30)
    return plain.stdout


def test_open_fifo_thread_reads_main_writes(tmp_path):
    # CPython's test_should_not_rollover_named_pipe, reduced.
    out = _same(tmp_path, """
    got = []
    def reader():
        with open(fifo, "rb") as f:
            got.append(describe(f.fileno()))
            got.append(f.read())
    t = in_thread(reader)
    with open(fifo, "w") as w:
        print("writer", describe(w.fileno()))
        w.write("hello")
    t.join()
    print("reader", *got, "then", os.pipe())
    """)
    assert "reader blocking=True b'hello'" in out


def test_open_fifo_main_reads_thread_writes(tmp_path):
    out = _same(tmp_path, """
    def writer():
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"from the thread")
        os.close(fd)
    t = in_thread(writer)
    fd = os.open(fifo, os.O_RDONLY)
    print("reader", describe(fd))
    chunks = []
    while chunk := os.read(fd, 100):
        chunks.append(chunk)
    os.close(fd)
    t.join()
    print(b"".join(chunks), "then", os.pipe())
    """)
    assert "b'from the thread'" in out


def test_open_fifo_reader_sees_eof_after_a_writer_left_without_writing(
        tmp_path):
    # The reader's open returns once a writer came, even if it is gone
    # again (the kernel's POLLHUP for that reader): its read is EOF.
    out = _same(tmp_path, """
    got = []
    def reader():
        fd = os.open(fifo, os.O_RDONLY)
        got.append(os.read(fd, 10))
        os.close(fd)
    t = in_thread(reader)
    os.close(os.open(fifo, os.O_WRONLY))
    t.join()
    print("read", got, "then", os.pipe())
    """)
    assert "read [b'']" in out


def test_open_fifo_calls_that_never_block_are_unchanged(tmp_path):
    _same(tmp_path, """
    fd = os.open(fifo, os.O_RDWR)
    print("rdwr", describe(fd))
    os.close(fd)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    print("nonblocking reader", describe(fd))
    try:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        print("nonblocking writer without a reader:", errno.errorcode[e.errno])
    os.close(fd)
    missing = os.path.join(d, "missing")
    for path, flags in ((missing, os.O_WRONLY), (missing, os.O_RDONLY),
                        (fifo, os.O_WRONLY | os.O_CREAT | os.O_EXCL)):
        try:
            os.open(path, flags)
        except OSError as e:
            print(os.path.basename(path), flags, errno.errorcode[e.errno])
    """)


def test_open_fifo_interrupted_by_a_signal_raises_from_the_handler(tmp_path):
    # No reader ever comes: plainly the kernel's open returns EINTR, CPython
    # runs the handler, and its exception ends the open.
    out = _same(tmp_path, """
    class Alarm(Exception):
        pass
    def on_alarm(signum, frame):
        raise Alarm
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        open(fifo, "wb")
    except Alarm:
        print("writer interrupted")
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        open(fifo, "rb")
    except Alarm:
        print("reader interrupted")
    print(sorted(os.listdir(d)))
    """)
    assert "writer interrupted\nreader interrupted" in out


def test_open_fifo_other_end_in_a_child_process(tmp_path):
    out = _same(tmp_path, """
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; print(open(sys.argv[1]).read(), flush=True)", fifo],
        stdout=subprocess.PIPE, text=True)
    with open(fifo, "w") as w:
        w.write("to the child")
    out, _ = child.communicate(timeout=20)
    print("child read", repr(out), child.returncode)
    """)
    assert "child read 'to the child\\n' 0" in out
