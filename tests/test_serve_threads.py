"""`vist2 serve`'s default torch thread count: one core left to the event loop, at least one
(the choice measured in benchmarks/serve.md)."""

from vist2.cli import main
from vist2.serve.command import default_threads


def test_one_core_is_left_to_the_event_loop():
    assert [default_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]


def test_help_states_the_default(capsys):
    try:
        main(["serve", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "torch's own count minus one" in text and "benchmarks/serve.md" in text
