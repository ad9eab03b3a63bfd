"""A forked child hands its values over one by one, each as soon as it has it.

Each test runs in a fresh single-threaded interpreter: the child is not forked while
other threads run, and a test runner may have some.
"""

from __future__ import annotations

from tests.integration.conftest import single_threaded


def test_the_first_value_is_taken_while_the_child_still_computes_the_second(tmp_path):
    taken = tmp_path / "taken"
    done = single_threaded(f"""
        import os, time
        from reconciler.runtime import side_process

        def work():
            yield {{"first": os.getpid()}}
            deadline = time.monotonic() + 20
            while not os.path.exists({str(taken)!r}):  # the second waits until the first was taken
                if time.monotonic() > deadline:
                    raise SystemExit("the first value was never taken")
                time.sleep(0.01)
            yield ["second"]

        with side_process.started(work, (dict, list)) as child:
            first = child.take()
            open({str(taken)!r}, "w").close()
            second = child.take()
            print(first["first"] != os.getpid(), second, child.take())
    """, timeout=60)
    assert done.stdout.strip() == "True ['second'] None", done.stderr


def test_a_child_that_dies_after_its_first_value_hands_that_one_and_no_other(tmp_path):
    done = single_threaded("""
        import os
        from reconciler.runtime import side_process

        def work():
            yield "read"
            os._exit(3)

        with side_process.started(work, (str, str)) as child:
            print(child.take(), child.take(), child.take())
    """, timeout=60)
    assert done.stdout.strip() == "read None None", done.stderr


def test_a_value_of_another_type_is_not_taken_nor_anything_after_it():
    done = single_threaded("""
        from reconciler.runtime import side_process

        with side_process.started(lambda: iter([1, "two", 3]), (int, int, int)) as child:
            print(child.take(), child.take(), child.take())
    """, timeout=60)
    assert done.stdout.strip() == "1 None None", done.stderr


def test_a_child_nobody_takes_from_is_killed_and_reaped_and_leaves_no_descriptor_open():
    done = single_threaded("""
        import os, time
        from reconciler.runtime import side_process

        def work():
            time.sleep(60)
            yield "late"

        before = set(os.listdir("/proc/self/fd"))
        child = side_process.SideProcess.start(work, (str,))
        pid = child._pid
        child.discard()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("gone", set(os.listdir("/proc/self/fd")) == before)
        else:
            print("still there")
    """, timeout=60)
    assert done.stdout.strip() == "gone True", done.stderr
