"""``--help`` of translate and batch in the UI's plain words: SPEC terms only in brackets, preset values of
every preset, examples, and "(default: X)" only where X means something. No model is loaded.

Expected strings are written out by hand from config.py's presets, not computed by the code under test.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex

import pytest

from dsct.cli import _HelpFormatter, build_parser, main
from dsct.config import TranslationConfig

# Words of the SPEC or the reference code that the plain part of a help text must not use.
JARGON = ("x̂0", "x_t", "patch NCE", "NCE", "MKL", "DINO", "ViT", "CLIP", "DDIM", "DDPM", "AdamW", "η", "λ",
          "use_noise_aug_all", "[CLS]")
# Where a bracketed term may come from: the method's spec, AGG's spec, the reference code, or (for the
# settings the spec leaves to the library: samples, seed) the library itself.
TERM_SOURCES = ("SPEC §", "SPEC-AGG §", "SPEC: ", "the reference's ", "library: ")
# mode has no flag (--text or --style decides it) and no SPEC term: its help is plain words already, and
# test_config_rules pins its exact text.
NO_TERM = {"mode"}

TRANSLATE_EXAMPLES = [
    "python -m dsct translate examples/cat.png --text 'Black Leopard' --source-text 'Cat' -o leopard.png",
    "python -m dsct translate examples/cat.png --style examples/hubble.png -o cat-hubble.png --fast",
    "python -m dsct translate examples/cat.png --method agg --text 'Black Leopard' --source-text 'Cat' "
    "-o leopard-agg.png --samples 2",
    "python -m dsct translate examples/cat.png --text 'Black Leopard' --source-text 'Cat' -o leopard-512.png "
    "--generator imagenet512 --class-label auto",
    "python -m dsct translate examples/cat.png --text 'Tiger' --source-text 'Cat' -o tiger.png --tiny --fast --size 64",
]
BATCH_EXAMPLES = [
    "python -m dsct batch photos/ --text 'Black Leopard' --source-text 'Lion' -o out/ --samples 2",
    "python -m dsct batch photos/ --style examples/hubble.png -o out-hubble/ --images-per-batch 4",
    "python -m dsct batch photos/ --method agg --style examples/hubble.png -o out-agg/",
    "python -m dsct batch photos/ --prompts prompts.csv -o out-tiny/ --tiny --fast --size 64",
]

EVAL_EXAMPLES = [
    "python -m dsct eval out/ --sources photos/",
    "python -m dsct eval stats --ref imagenet/train -o stats.pt --class-index",
    "python -m dsct eval flexit --queries queries.csv --imagenet-val imagenet/val -o bench/",
    "python -m dsct batch bench/sources --prompts bench/prompts.csv -o bench-out/ --resize-mode center_crop",
    "python -m dsct eval bench-out/ --sources bench/sources --classes bench/classes.csv --stats inception_stats_256.pt "
    "--lpips-x100",
    "python -m dsct eval bench/sources --copy-baseline --classes bench/classes.csv --stats inception_stats_256.pt -o copy/",
]


def outside_brackets(text: str) -> str:
    """The text with every [...] span removed, innermost first, so a term nested in a bracket ("[SPEC §4:
    the previous step's DINO [CLS]]") goes with its bracket; what is left is what a reader meets unexplained."""
    while True:
        shorter = re.sub(r"\[[^\[\]]*\]", "", text)
        if shorter == text:
            return text
        text = shorter


def last_bracket(text: str) -> str | None:
    """The content of the top-level [...] the text ends with, nested brackets included; None without one."""
    if not text.endswith("]"):
        return None
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {"]": 1, "[": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1:-1]
    return None


@pytest.fixture
def help_of(monkeypatch, capsys):
    """``main([command, '--help'])``'s stdout, one line per option (a wide terminal: argparse wraps nothing)."""
    monkeypatch.setenv("COLUMNS", "1000")

    def run(command: str) -> str:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        return capsys.readouterr().out
    return run


def option_line(text: str, flag: str) -> str:
    """One option's entry on one line: the line that starts with it (or with its short form), joined with
    the help argparse puts on the next line when the invocation is long."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"  (-\w \S+, )?{re.escape(flag)}\b", line)]
    assert len(starts) == 1, (flag, starts)
    entry = [lines[starts[0]]]
    entry += [line for line in lines[starts[0] + 1:starts[0] + 2] if line.startswith("    ")]
    return " ".join(" ".join(entry).split())


@pytest.mark.parametrize("command", ["translate", "batch"])
def test_no_default_none_and_none_on_required_flags(help_of, command):
    text = help_of(command)
    assert "(default: None)" not in text and "(default: False)" not in text and "==SUPPRESS==" not in text
    required = "--output" if command == "translate" else "--output-dir"
    assert "(default:" not in option_line(text, required)
    assert "(default: auto)" in option_line(text, "--device")  # a meaningful default is still said


def test_batch_shows_a_meaningful_numeric_default(help_of):
    assert option_line(help_of("batch"), "--images-per-batch").endswith("(default: 1)")


def test_formatter_says_a_default_only_where_it_means_something():
    parser = argparse.ArgumentParser(formatter_class=_HelpFormatter)
    parser.add_argument("--need", required=True, default="x", help="needed")
    parser.add_argument("--none", default=None, help="nothing")
    parser.add_argument("--zero", type=int, default=0, help="zero")  # 0 == False, but says something
    parser.add_argument("--switch", action="store_true", help="off")
    parser.add_argument("--named", default="auto", help="named (default: the first)")
    parser.add_argument("where", help="a positional")
    text = " ".join(parser.format_help().split())
    assert "needed --none NONE nothing --zero" in text and "zero (default: 0) --switch" in text
    assert "off --named NAMED named (default: the first)" in text and text.endswith("(default: the first)")
    assert "a positional options:" in text and text.count("(default:") == 2


@pytest.mark.parametrize("command", ["translate", "batch"])
def test_spec_jargon_only_in_brackets(help_of, command):
    text = help_of(command)
    for term in ("x̂0", "patch NCE", "MKL", "use_noise_aug_all"):
        assert term in text, term  # still there for those who know the SPEC ...
        assert term not in outside_brackets(text), term  # ... but always inside a bracket


@pytest.mark.parametrize("command, examples", [("translate", TRANSLATE_EXAMPLES), ("batch", BATCH_EXAMPLES),
                                               ("eval", EVAL_EXAMPLES)])
def test_help_ends_with_examples_that_parse(help_of, command, examples):
    text = help_of(command)
    lines = [line.strip() for line in text.splitlines()]
    assert "examples:" in lines
    for example in examples:
        assert example in lines, example  # whole, on one line: RawDescription keeps the epilog as written
        build_parser().parse_args(shlex.split(example)[3:])  # copy-pasteable: every flag exists


@pytest.mark.parametrize("command", ["translate", "batch"])
def test_preset_values_of_every_preset(help_of, command):
    text = help_of(command)
    assert option_line(text, "--steps").endswith("[100 / 200; fast 50 / 100; agg 100 / 100 / 100]")
    assert option_line(text, "--resample-repeats").endswith("(DiffuseIT only) [10 / 10; fast 4 / 4]")
    assert option_line(text, "--lambda-ssim").endswith("(DiffuseIT only) [1000.0 / 1000.0]")
    assert option_line(text, "--lambda-clip").endswith("[2000.0 / 0.0; agg 200.0 / 0.0 / 200.0]")
    assert option_line(text, "--size").endswith("[256 / 256]")  # the same everywhere: one pair
    assert option_line(text, "--eta-edit").endswith("(AGG only) [agg 0.7 / 0.7 / 0.0]")
    assert option_line(text, "--fast").endswith("(DiffuseIT only)")


def test_the_plain_words_keep_the_ui_meaning(help_of):
    text = help_of("translate")
    assert "how closely each patch keeps its own content [SPEC §4: contrastive patch NCE loss" in text
    assert "structure check on noisy previews: steadier structure guidance [the reference's use_noise_aug_all" in text


@pytest.mark.parametrize("f", dataclasses.fields(TranslationConfig), ids=lambda f: f.name)
def test_every_setting_help_is_plain_words_then_a_bracketed_term(f):
    help_ = f.metadata["help"]
    plain = outside_brackets(help_)
    for term in JARGON:
        assert term not in plain, term
    if f.name in NO_TERM:
        assert last_bracket(help_) is None
        return
    term = last_bracket(help_)
    assert term is not None and term.startswith(TERM_SOURCES), term
    assert plain.strip() and plain.strip() == plain.rstrip(), "plain words come first"


def test_outside_brackets_and_last_bracket_helpers():
    assert outside_brackets("a [b [c] d] e [f]") == "a  e "
    assert last_bracket("keep [x] it [SPEC §4: the [CLS] token]") == "SPEC §4: the [CLS] token"
    assert last_bracket("no term") is None
