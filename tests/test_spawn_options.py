"""spawn's keyword arguments are its own options (name, stack_size,
preemptible) and never the target's, so a target whose own parameters are
called name= or stack_size= cannot collide with them: its keyword arguments
go through functools.partial (docs/api.md, spawn)."""
import functools

import pytest

import interpose

pytestmark = pytest.mark.timeout(30)

STACK = 1 << 20


def _target(*args, name="target default", stack_size=0, preemptible=None):
    return args, name, stack_size, preemptible


def test_spawn_target_keywords_named_like_options_reach_the_target():
    def main():
        fn = functools.partial(_target, name="for fn", stack_size=7,
                               preemptible="fn's")
        c = interpose.spawn(fn, 1, 2, name="worker", stack_size=STACK,
                            preemptible=False)
        assert c.name == "worker"
        assert c.join() == ((1, 2), "for fn", 7, "fn's")

    interpose.run(main)


def test_spawn_options_do_not_reach_the_target():
    def main():
        c = interpose.spawn(_target, "a", name="worker", stack_size=STACK)
        assert c.name == "worker"
        assert c.join() == (("a",), "target default", 0, None)

    interpose.run(main)


def test_spawn_target_positional_args_may_look_like_options():
    # fn is positional-only: a target whose first parameter is fn is fine.
    def main():
        c = interpose.spawn(lambda fn, name: (fn, name), "f", "n")
        assert c.join() == ("f", "n")
        assert c.name.startswith("coroutine-")

    interpose.run(main)


@pytest.mark.parametrize("kwargs", [{"timeout": 1}, {"key": "v", "fn": None}])
def test_spawn_unknown_keyword_raises_type_error_naming_partial(kwargs):
    def main():
        before = interpose.statistics().coroutines_created
        with pytest.raises(TypeError) as caught:
            interpose.spawn(_target, **kwargs)
        message = str(caught.value)
        assert "functools.partial" in message
        for key in kwargs:
            assert f"{key}=" in message
        # Refused before anything was created.
        assert interpose.statistics().coroutines_created == before

    interpose.run(main)
