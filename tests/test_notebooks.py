"""The study notebooks run top to bottom under papermill on tiny settings, writing their figures."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
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
    nb = _run("01_extract_cross_attention.ipynb", run_dir, n_utterances=2, input_mode="trimmed")
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "2 done, 0 skipped, 0 failed" in text
    figs = {p.stem for p in (run_dir / "figures").glob("01_*.png")}
    assert {"01_spectrogram_default-en-test-00000", "01_attention_grid_default-en-test-00000",
            "01_attention_mean_default-en-test-00000"} <= figs
    assert (run_dir / "figures" / "01_attention_grid_default-en-test-00000.svg").exists()


def test_02_saliency(run_dir):
    nb = _run("02_saliency_maps.ipynb", run_dir, n_utterances=1, input_mode="trimmed", n_masks=32, n_masks_h=32,
              ig_steps=2, methods=["spes-x", "spes-h", "saliency"])
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "1 done" in text or "1 skipped" in text
    assert (run_dir / "figures" / "02_side_by_side_default-en-test-00000.png").exists()
    assert (run_dir / "figures" / "02_smx_tokens_default-en-test-00000.png").exists()


def test_03_alignment_analysis(run_dir):
    nb = _run("03_alignment_analysis.ipynb", run_dir, n_boot=50)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "Pearson(CA, SMX)" in text and "0.52" in text
    assert (run_dir / "tables" / "agreement.parquet").exists()
    for fig in ("03_layer_head_grid", "03_layer_curves", "03_utterance_distribution"):
        assert (run_dir / "figures" / f"{fig}.png").exists()


def test_04_faithfulness(run_dir):
    _run("04_faithfulness.ipynb", run_dir, n_utterances=1, input_mode="trimmed", modes=["deletion"],
         explanations=["ca:all", "smx", "random"])
    import pandas as pd

    aucs = pd.read_csv(run_dir / "tables" / "faithfulness_auc.csv")
    assert set(aucs.explanation) == {"ca:all", "smx", "random"}
    curves = pd.read_parquet(run_dir / "tables" / "faithfulness_curves.parquet")
    assert (curves[curves.percent == 0].wer == 0).all()  # deletion at p = 0 reproduces the hypothesis
    assert (run_dir / "figures" / "04_faithfulness.png").exists()


def test_00_tour(run_dir):
    import re

    from xattn_utils.agreement import utterance_agreement
    from xattn_utils.compare import CompareConfig, utterance_maps
    from xattn_utils.store import open_store

    nb = _run("00_tour.ipynb", run_dir, n_masks=16)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    r = {ref: float(v) for ref, v in re.findall(r"Pearson\(CA\[all\], (\w+)\) = (-?\d\.\d+)", text)}
    assert set(r) == {"SMX", "SMH", "SALIENCY_X"}, text
    # the printed number is the library's number on the maps the tour stored, and CA does resemble SMH
    maps = utterance_maps(open_store(run_dir / "store_00_tour"), "default-en-test-00000", CompareConfig(per_head=False))
    assert r["SMH"] == pytest.approx(utterance_agreement(maps["all"], maps["smh"], "pearson"), abs=1e-3)
    assert r["SMX"] == pytest.approx(utterance_agreement(maps["all"], maps["smx"], "pearson"), abs=1e-3)
    assert 0.1 < r["SMH"] < 1
    assert re.search(r"layers = last +Pearson\(CA, SMX\) = +-?\d\.\d{3}", text)
    # masks exercise: a quarter, n_masks and four times n_masks; the largest map is its own reference
    masks = re.findall(r"masks = +(\d+) +Pearson\(CA, SMX\) = +(-?\d\.\d+) +Pearson\(SMX, SMX@64\) = +(-?\d\.\d+)",
                       text)
    assert [int(m) for m, _, _ in masks] == [4, 16, 64]
    assert float(masks[-1][2]) == 1.0 and float(masks[0][2]) < 1.0
    # sanity check: the gradient map of a randomized model no longer resembles the trained model's
    sanity = {p: float(v) for p, v in re.findall(r"randomized ([a-z+]+)\) = (-?\d\.\d+)", text)}
    assert set(sanity) == {"decoder", "encoder+decoder"}
    assert sanity["decoder"] < 0.9 and sanity["encoder+decoder"] < 0.3
    for fig in ("00_input", "00_attention_grid", "00_cross_attention", "00_saliency", "00_layers", "00_masks",
                "00_sanity"):
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
        assert value == pytest.approx(table.loc[name, "within_50ms"], abs=5e-4)
    assert table.loc["all", "n_words"] > 5 and len(table) == 24 + 4 + 1 + 2  # heads, layers, all, official, found
    assert "discovered heads (k = " in text
    for fig in ("05_boundaries", "05_head_grid", "05_sources"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
