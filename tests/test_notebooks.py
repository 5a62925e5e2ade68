"""The study notebooks run top to bottom under papermill on tiny settings, writing their figures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from tolerances import f64, measured, printed

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# a correlation recomputed from the stored float32 maps by another route (float32 head and mel means here, float64
# in the library): measured 4.7e-8 on notebook 03's utterance; ×20
RECOMPUTED = measured(5e-8, margin=20)
PRINTED_3 = printed(3)  # a number printed with 3 decimals is this close to the one computed
pytestmark = pytest.mark.slow


def _run(name: str, run_dir: Path, **params) -> nbformat.NotebookNode:
    import papermill as pm

    out = run_dir / name
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters={"run_dir": str(run_dir), **params},
                        progress_bar=False, kernel_name="python3", cwd=str(run_dir))
    return nbformat.read(out, as_version=4)


def test_committed_notebooks_are_clean_and_parameterized():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


def test_01_extract(run_dir):
    # the utterances by id, in their order: the one shown (show = 0) is the first given, not the manifest's first
    nb = _run("01_extract_cross_attention.ipynb", run_dir, n_utterances=2, input_mode="trimmed",
              utterances=["default-en-test-00001", "default-en-test-00000"])
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "2 done, 0 skipped, 0 failed" in text
    figs = {p.stem for p in (run_dir / "figures").glob("01_*.png")}
    assert {"01_spectrogram_default-en-test-00001", "01_attention_grid_default-en-test-00001",
            "01_attention_mean_default-en-test-00001"} <= figs and not any(f.endswith("00000") for f in figs)
    assert (run_dir / "figures" / "01_attention_grid_default-en-test-00001.svg").exists()


def test_02_saliency(run_dir):
    from xattn_utils import open_store

    uid = "default-en-test-00000"
    before = open_store(run_dir / "store").load(uid, "attention")  # notebook 01's, with hidden states
    nb = _run("02_saliency_maps.ipynb", run_dir, n_utterances=1, n_masks=32, n_masks_h=32, ig_steps=2,
              methods=["spes-x", "spes-h", "saliency"])  # the input mode: the store's, notebook 01's
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "1 done" in text or "1 skipped" in text
    assert "input mode: trimmed" in text  # read from the store notebook 01 made
    after = open_store(run_dir / "store").load(uid, "attention")  # explained as stored: not decoded again
    assert after.attrs["cache_key"] == before.attrs["cache_key"] and "encoder_hidden" in after
    assert list(after.token_id.values) == list(before.token_id.values)
    assert (run_dir / "figures" / "02_side_by_side_default-en-test-00000.png").exists()
    assert (run_dir / "figures" / "02_smx_tokens_default-en-test-00000.png").exists()
    # the sanity check on the study's grid: every method has its noise floor and a ratio per randomization
    checks = re.findall(r"sanity ([A-Za-z ()]+?): (trained|decoder|encoder\+decoder) +r = +(-?\d\.\d+) +ratio = +"
                        r"(-?\d\.\d+|nan)", text)
    assert {(m, c) for m, c, _, _ in checks} == {(m, c) for m in ("SMX (SPES)", "SMH (SPES)", "Saliency on X")
                                                  for c in ("trained", "decoder", "encoder+decoder")}
    assert all(r in ("1.000", "nan") for m, c, _, r in checks if c == "trained")  # nan: no positive noise floor
    assert [r for m, c, _, r in checks if m == "Saliency on X" and c == "trained"] == ["1.000"]
    for fig in ("02_sanity_default-en-test-00000", "02_convergence_default-en-test-00000"):
        assert (run_dir / "figures" / f"{fig}.png").exists()


def test_03_alignment_analysis(run_dir):
    nb = _run("03_alignment_analysis.ipynb", run_dir, n_boot=50)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "Pearson(CA, SMX)" in text and "0.52" in text
    assert (run_dir / "tables" / "agreement.parquet").exists()
    for fig in ("03_layer_head_grid", "03_layer_curves", "03_utterance_distribution", "03_headline"):
        assert (run_dir / "figures" / f"{fig}.png").exists()
    assert "reliability" in text and "corrected" in text
    # the table's number, recomputed with a few lines of numpy from the stored maps (mean pooling over the cells
    # present, z-scored rows, end-of-text row dropped)
    import numpy as np
    import pandas as pd

    from xattn_utils import open_store

    st = open_store(run_dir / "store")
    uid = "default-en-test-00000"
    att, smx = st.load(uid, "attention"), st.load(uid, "spes_x").saliency.values[:-1].mean(-1)  # (I, T)
    ca = att.cross_attention.values.mean((0, 1))[:-1]
    t_enc = ca.shape[1]
    padded = np.full((smx.shape[0], 2 * t_enc), np.nan)
    padded[:, : smx.shape[1]] = smx
    pooled = np.nanmean(padded.reshape(smx.shape[0], t_enc, 2), -1)
    z = lambda m: (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)
    expected = np.corrcoef(z(ca).ravel(), z(pooled).ravel())[0, 1]
    table = pd.read_parquet(run_dir / "tables" / "agreement.parquet")
    got = table[(table.level == "utterance") & (table.utterance == uid) & (table.attention == "all")
                & (table.reference == "smx") & (table.measure == "pearson")].value.item()
    assert got == pytest.approx(expected, abs=RECOMPUTED)
    ablation = pd.read_csv(run_dir / "tables" / "03_grid_ablation.csv")
    assert set(ablation.variant) == {"sum+minmax", "mean+zscore", "max+zscore"}


def test_04_faithfulness(run_dir):
    _run("04_faithfulness.ipynb", run_dir, n_utterances=1, modes=["deletion"],
         explanations=["ca:all", "smx", "random"])
    import pandas as pd

    aucs = pd.read_csv(run_dir / "tables" / "faithfulness_auc.csv")
    assert set(aucs.explanation) == {"ca:all", "smx", "random"}
    summary = pd.read_csv(run_dir / "tables" / "faithfulness_summary.csv")
    assert (summary.n_paired == 1).all() and (summary.n == 1).all()
    curves = pd.read_parquet(run_dir / "tables" / "faithfulness_curves.parquet")
    assert (curves[curves.percent == 0].wer == 0).all()  # deletion at p = 0 reproduces the hypothesis
    assert (run_dir / "figures" / "04_faithfulness.png").exists()


# a number in prose: grouped thousands ("20 000") or a plain or decimal number not inside a word or a dotted name
_PROSE_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:[ \u00a0\u202f]\d{3})+|\d+(?:\.\d+)?)(?![\w.]*\w)")


def _prose_numbers(markdown: str) -> list[str]:
    """The numbers a markdown cell states: not in math, code, headings, list markers or citation years."""
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`", " ", markdown, flags=re.S)
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"^\s*\d+\.\s", " ", line)  # an ordered list's marker
        line = re.sub(r"\b(?:19|20)\d{2}\b", " ", line)  # a citation's year
        out += _PROSE_NUMBER.findall(line)
    return out


def _unbacked(markdown: str, numbers: dict) -> list[str]:
    """The prose numbers that no computed number rounds to at the precision the prose writes them."""
    values = [float(v) for v in numbers.values()]
    bad = []
    for word in _prose_numbers(markdown):
        x = float(re.sub(r"\s", "", word))
        decimals = len(word.split(".")[1]) if "." in word else 0
        if not any(abs(v - x) <= printed(decimals) for v in values):  # written with `decimals` decimals
            bad.append(word)
    return bad


def test_prose_number_check_catches_a_stale_number():
    numbers = {"paper": 0.58, "masks": 20000, "bins": 80}
    assert _prose_numbers("best ≈ 0.58 (Papi et al. 2025), `n_masks = 64`, $T' = 2$,\n1. step") == ["0.58"]
    assert _unbacked("the paper's 0.58 at 20 000 masks, 80 mel bins", numbers) == []
    assert _unbacked("the full study finds ≈ 0.16 over 11 utterances", numbers) == ["0.16", "11"]


def test_00_tour(run_dir):
    from xattn_utils.analysis.agreement import utterance_agreement
    from xattn_utils.analysis.compare import PAPER, CompareConfig, utterance_maps
    from xattn_utils.store import open_store

    nb = _run("00_tour.ipynb", run_dir, n_masks=16)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    r = {ref: float(v) for ref, v in re.findall(r"Pearson\(CA\[all\], (\w+)\) = (-?\d\.\d+)", text)}
    assert set(r) == {"SMX", "SMH", "SALIENCY_X"}, text
    # the printed number is the library's number on the maps the tour stored
    maps = utterance_maps(open_store(run_dir / "store_00_tour"), "default-en-test-00000", CompareConfig(per_head=False))
    for ref in ("smx", "smh"):  # printed to 3 decimals, recomputed from the stored maps
        assert r[ref.upper()] == pytest.approx(utterance_agreement(maps["all"], maps[ref], "pearson"),
                                               abs=PRINTED_3 + RECOMPUTED)
    assert 0.1 < r["SMH"] < 1
    # every number the prose states is one the tour computed (or the paper's, from the library's PAPER)
    numbers = json.loads((run_dir / "tables" / "00_tour_numbers.json").read_text())
    assert numbers["paper: best Pearson(CA, SMX)"] == PAPER["pearson_ca_smx_best"]
    assert numbers["Pearson(CA[all], SMX)"] == pytest.approx(r["SMX"], abs=PRINTED_3)  # printed to 3 decimals
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert len(_prose_numbers(prose)) >= 8  # the paper's numbers, the grid's sizes: the check is not vacuous
    assert _unbacked(prose, numbers) == [], "the tour's prose states numbers its code no longer produces"
    # the grid the prose describes is the library's: mean pooling over 2 frames x 80 mel bins, z-scored rows
    assert numbers["input frames per encoder frame"] == 2 and numbers["mel bins"] == 80
    # the headline table sits beside the paper's numbers; the utterance and one occluded version are playable
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"≈ {PAPER['pearson_ca_smx_best']}" in html and "{}–{}".format(*PAPER["pearson_ca_smh_range"]) in html
    assert html.count("<audio") == 2 and html.count("data:audio/wav;base64") == 2
    assert re.search(r"mask 0 silences \d+% of the cells", text)
    for fig in ("00_input", "00_attention_grid", "00_cross_attention", "00_saliency", "00_occlusion", "00_layers"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
    where_next = nb.cells[[i for i, c in enumerate(nb.cells) if c.source.startswith("## Where next")][0]].source
    for other in sorted(NOTEBOOKS.glob("*.ipynb")):
        assert other.name == "00_tour.ipynb" or f"`{other.name}`" in where_next, other.name


def test_00_tour_solutions(run_dir):
    """The exercises' worked solutions run on their own (here after the tour: its store's maps are reused)."""
    nb = _run("00_tour_solutions.ipynb", run_dir, n_masks=16)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    # exercise 1: every aggregate ranked, the tour's own among them with the tour's value
    ranked = {a: (float(x), float(h)) for a, x, h in re.findall(
        r"attention = (\S+) +Pearson\(CA, SMX\) = +(-?\d\.\d+) +Pearson\(CA, SMH\) = +(-?\d\.\d+)", text)}
    assert {"all", "last_layer", "norm:all", "layer0", "layer3"} <= set(ranked), text
    tour = json.loads((run_dir / "tables" / "00_tour_numbers.json").read_text())
    assert ranked["all"][0] == pytest.approx(tour["Pearson(CA[all], SMX)"], abs=PRINTED_3)  # printed to 3 decimals
    best = re.search(r"best for SMX: (\S+); best for SMH: (\S+)", text)
    assert ranked[best[1]][0] == max(v[0] for v in ranked.values())
    assert ranked[best[2]][1] == max(v[1] for v in ranked.values())
    # exercise 2: a quarter, n_masks and four times n_masks; the largest map is its own reference
    masks = re.findall(r"masks = +(\d+) +Pearson\(CA, SMX\) = +(-?\d\.\d+) +Pearson\(SMX, SMX@64\) = +(-?\d\.\d+)",
                       text)
    assert [int(m) for m, _, _ in masks] == [4, 16, 64]
    assert float(masks[-1][2]) == 1.0 and float(masks[0][2]) < 1.0
    # the tour's 16-mask map, pooled by the tour, and the one pooled here agree with CA alike
    assert float(masks[1][1]) == pytest.approx(tour["Pearson(CA[all], SMX)"], abs=PRINTED_3)  # printed to 3 decimals
    # exercise 3: the gradient map of a randomized model no longer resembles the trained model's
    sanity = {p: float(v) for p, v in re.findall(r"sanity \(Saliency on X\): Pearson\(trained, randomized "
                                                 r"([a-z+]+)\) = (-?\d\.\d+)", text)}
    assert set(sanity) == {"decoder", "encoder+decoder"}
    assert sanity["decoder"] < 0.9 and sanity["encoder+decoder"] < 0.3
    assert len(re.findall(r"sanity \(SMX \(16 masks\)\): .* \(ratio (?:-?\d+\.\d+|nan)\)", text)) == 2
    # exercise 4: undoing 0 encoder layers is CA itself; every method prints k = 0..4 (tiny.en has 4 encoder layers)
    undo = {m: [float(v) for v in vals.split()] for m, vals in
            re.findall(r"(\w+) +Pearson\(CA∘M_k, SMX\), k = 0\.\.4: ((?: +-?\d\.\d+)+)", text)}
    assert set(undo) == {"rollout", "normmix", "alti"} and all(len(v) == 5 for v in undo.values()), text
    # two numbers each printed to 3 decimals: one printed step apart at most
    assert all(v[0] == pytest.approx(tour["Pearson(CA[all], SMX)"], abs=2 * PRINTED_3) for v in undo.values())
    assert len({round(v[-1], 3) for v in undo.values()}) > 1  # the methods disagree once layers are undone
    for fig in ("00_masks", "00_sanity"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000


def test_00_train_models(run_dir):
    """The training notebook on a tiny grid: corpus, training, evaluation, saved model, figures, table."""
    out = run_dir / "grid"
    _run("00_train_models.ipynb", run_dir, kinds=["en-asrst"], scales=["s"], steps={"s": 30}, n_train=8,
         n_test=3, out=str(out))
    import pandas as pd

    from xattn_utils import load_model

    scores = pd.read_csv(run_dir / "tables" / "models.csv")
    assert set(zip(scores.task, scores.split)) == {("transcribe", "test"), ("transcribe", "test_unseen_voice"),
                                                   ("translate", "test"), ("translate", "test_unseen_voice")}
    assert (scores.n == 3).all() and (scores.steps == 30).all() and scores.wer.notna().all()
    loaded = load_model(str(out / "xattn-en-asrst-s"))
    assert loaded.model.generation_config.is_multilingual
    assert "## Scores" in (out / "xattn-en-asrst-s" / "README.md").read_text()
    for fig in ("00_train_loss", "00_train_scores"):
        assert (run_dir / "figures" / f"{fig}.png").exists()


def test_06_context_mixing(run_dir):
    """Mixing maps for the utterance notebook 02 explained (or SPES here when run alone), CA∘M vs SMX, cost."""
    import re

    import pandas as pd

    from xattn_utils.analysis.agreement import utterance_agreement
    from xattn_utils.analysis.compare import CompareConfig, utterance_maps
    from xattn_utils.store import open_store

    nb = _run("06_context_mixing.ipynb", run_dir, n_utterances=1, n_masks=32, n_masks_h=32,
              n_boot=50)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    got = {name: float(v) for name, v in re.findall(r"Pearson\((\S+), SMX\) = (-?\d\.\d+) \[", text)}
    assert {"CA[all]", "rollout∘all", "normmix∘all", "alti∘all", "vzero∘all", "SMH", "rollout∘SMH"} <= set(got), text
    # with one utterance the dataset value is that utterance's: recompute it from the store with the library
    st = open_store(run_dir / "store")
    uid = [u for u in st.utterances() if "mixing" in st.kinds(u)][0]
    maps = utterance_maps(st, uid, CompareConfig(per_head=False, mixing=("rollout",)))
    # printed to 3 decimals, recomputed from the stored maps
    assert got["rollout∘all"] == pytest.approx(utterance_agreement(maps["rollout∘all"], maps["smx"], "pearson"),
                                               abs=PRINTED_3 + RECOMPUTED)
    assert got["CA[all]"] == pytest.approx(utterance_agreement(maps["all"], maps["smx"], "pearson"),
                                           abs=PRINTED_3 + RECOMPUTED)
    cost = pd.read_csv(run_dir / "tables" / "06_mixing_cost.csv").set_index("explanation")
    assert cost.loc["SPES-X (32 masks)", "ratio_to_spes"] == 1.0
    assert cost.loc["CA∘rollout", "seconds"] < cost.loc["CA∘vzero", "seconds"]
    answer = pd.read_csv(run_dir / "tables" / "06_mixing_answer.csv")
    assert sorted(set(answer.depth)) == [0, 1, 2, 3, 4]
    assert {m for m in answer.method if not m.endswith("-blur")} == {"rollout", "normmix", "alti", "vzero"}
    assert re.search(r"best composed: \S+∘\S+ Pearson = -?\d\.\d{3}", text)
    gain = pd.read_csv(run_dir / "tables" / "06_mixing_gain.csv")
    # the table rounds gain, composed and ca to 3 decimals (gain = composed − ca before rounding)
    assert len(gain) == 4 * 8 and (gain.gain - (gain.composed - gain.ca)).abs().max() < 3 * PRINTED_3 + f64(1, 2)
    assert {"rollout-blur", "vzero-blur"} <= set(gain.method)  # the smoothing control beside each method
    for fig in ("06_mixing_bars", "06_mixing_depth"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000


def test_05_word_timestamps(run_dir):
    import re

    import pandas as pd

    nb = _run("05_word_timestamps.ipynb", run_dir, n_utterances=4, input_mode="trimmed", k_max=3, n_boot=20)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    printed = {n: float(v) for n, v in re.findall(r"(\w+) +within 50 ms = (\d\.\d{3})", text)}
    assert set(printed) == {"alignment", "discovered", "all"}, text
    table = pd.read_csv(run_dir / "tables" / "05_timestamp_accuracy.csv").set_index("source")
    for name, value in printed.items():  # the printed number is the table's
        assert value == pytest.approx(table.loc[name, "within_50ms"], abs=PRINTED_3)  # printed to 3 decimals
    assert table.loc["all", "n_words"] > 5 and len(table) == 24 + 4 + 1 + 2  # heads, layers, all, official, found
    assert "discovered heads (k = " in text
    for fig in ("05_boundaries", "05_head_grid", "05_sources"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
