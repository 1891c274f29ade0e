"""The public API is exactly what __init__ re-exports and lists in __all__."""
import interpose


def test_public_names_equal_all():
    public = {name for name in dir(interpose) if not name.startswith("_")}
    public.add("__version__")
    assert public == set(interpose.__all__)


def test_private_modules_are_underscored():
    import os

    for name in os.listdir(interpose.__path__[0]):
        if name.endswith(".py"):
            assert name.startswith("_"), name
