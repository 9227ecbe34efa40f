"""Task kinds as objects (``mtl.tasks.KINDS``) and the regression kind they make one class."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl.errors import ConfigError, DataError
from mtl.tasks import (BINARY, CATEGORICAL, IDENTITY, KINDS, REGRESSION, TaskKind, TaskSpec, attribute_tasks,
                       classification_tasks, find_identity, resolve)
from tests.conftest import tiny_config
from tests.source_folders import HEADER, write_fashion

REPO = Path(__file__).resolve().parents[1]
YEAR = TaskSpec("year", (), REGRESSION, center=2012.0, spread=2.0)
AGE = TaskSpec("age", ("young", "adult", "old"), CATEGORICAL)
HAT = TaskSpec("hat", ("no", "yes"), BINARY)


def test_the_table_holds_one_object_per_kind_and_specs_round_trip():
    assert set(KINDS) == {BINARY, CATEGORICAL, IDENTITY, REGRESSION}
    assert all(isinstance(k, TaskKind) and k.name == name for name, k in KINDS.items())
    for spec in (YEAR, AGE, HAT, TaskSpec("identity", ("3", "7"), IDENTITY)):
        assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert spec.type is KINDS[spec.kind]
    assert YEAR.to_dict() == {"name": "year", "kind": "regression", "classes": [], "center": 2012.0, "spread": 2.0}
    assert "center" not in AGE.to_dict()  # tasks.json of the classification kinds is unchanged


def test_invalid_specs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown kind 'ordinal'"):
        TaskSpec("x", ("a",), "ordinal")
    with pytest.raises(ConfigError, match="exactly 2 classes"):
        TaskSpec("x", ("a", "b", "c"), BINARY)
    with pytest.raises(ConfigError, match="has no classes"):
        TaskSpec("x", ("a",), REGRESSION)
    with pytest.raises(ConfigError, match="spread"):
        TaskSpec("x", (), REGRESSION, spread=0.0)


def test_the_selections_follow_the_kinds():
    ident = TaskSpec("identity", ("1", "2"), IDENTITY)
    tasks = [AGE, ident, YEAR, HAT]
    assert attribute_tasks(tasks) == [AGE, YEAR, HAT]
    assert classification_tasks(tasks) == [AGE, HAT]
    assert find_identity(tasks) is ident and find_identity([AGE]) is None
    table = {t.name: t for t in tasks}
    # `all` leaves out what is asked for by name: identity and regression tasks
    assert [t.name for t in resolve("all", table)] == ["age", "hat"]
    assert [t.name for t in resolve("year,age", table)] == ["age", "year"]


def test_fitting_a_regression_task_takes_the_training_labels_centre_and_spread():
    fitted = YEAR.type.fit_labels(TaskSpec("year", (), REGRESSION), pd.Series([2010.0, np.nan, 2014.0]))
    assert (fitted.center, fitted.spread) == (2012.0, 2.0)
    assert YEAR.type.fit_labels(TaskSpec("year", (), REGRESSION), [5.0, 5.0]).spread == 1.0  # constant: unit spread
    with pytest.raises(DataError, match="no labelled training image"):
        YEAR.type.fit_labels(YEAR, [np.nan])
    assert AGE.type.fit_labels(AGE, [0, 1]) is AGE


def test_masked_huber_is_the_mean_over_labelled_rows_in_units_of_the_spread():
    from mtl.losses import MaskedHuber

    y = np.array([2012.0, np.nan, 2016.0, 2013.0], np.float32)
    pred = np.array([[2013.0], [1990.0], [2012.0], [2013.0]], np.float32)
    # errors / spread 2: 0.5 (quadratic: 0.125), -2 (linear: 1.5), 0 -> mean over the 3 labelled rows
    assert float(MaskedHuber(scale=2.0)(y, pred)) == pytest.approx((0.125 + 1.5 + 0.0) / 3, rel=1e-6)
    assert float(MaskedHuber(scale=2.0)(np.full(2, np.nan, np.float32), pred[:2])) == 0.0
    assert float(MaskedHuber().label_weight(y)) == 3.0


def test_the_regression_training_metrics_skip_missing_labels():
    from mtl.metrics import MaskedHuberMetric, MaskedMeanAbsoluteError

    mae, huber = MaskedMeanAbsoluteError(), MaskedHuberMetric(scale=2.0)
    for metric in (mae, huber):
        metric.update_state(np.array([2012.0, np.nan], np.float32), np.array([[2014.0], [0.0]], np.float32))
        metric.update_state(np.array([2010.0], np.float32), np.array([[2010.5]], np.float32))
    assert float(mae.result()) == pytest.approx(1.25)
    assert float(huber.result()) == pytest.approx((0.5 + 0.5 * 0.25 ** 2) / 2)


def test_evaluate_regression_gives_mae_rmse_r2_and_the_mean_baseline():
    from sklearn.metrics import r2_score

    from mtl.scoring import evaluate_task

    y = np.array([2010.0, 2012.0, np.nan, 2016.0])
    p = np.array([[2011.0], [2012.0], [1900.0], [2013.0]])
    r = evaluate_task(y, p, YEAR)
    assert r["support"] == 3 and r["kind"] == REGRESSION
    assert r["mae"] == pytest.approx(4 / 3) and r["rmse"] == pytest.approx(np.sqrt(10 / 3))
    assert r["r2"] == pytest.approx(r2_score([2010, 2012, 2016], [2011, 2012, 2013]))
    assert r["baseline_mae"] == pytest.approx((2 + 0 + 4) / 3)  # |y - 2012|, the training mean
    assert evaluate_task(np.array([np.nan]), np.array([[1.0]]), YEAR)["mae"] is None


def test_a_regression_task_has_its_own_result_and_stays_out_of_the_summary():
    from mtl.scoring import evaluate_attributes

    labels = {"age": np.array([0, 1, 2, -1]), "year": np.array([2012.0, np.nan, 2013.0, 2011.0])}
    probs = {"age": np.eye(3, dtype=np.float32)[[0, 1, 1, 0]], "year": np.array([[2012.0], [0], [2012.0], [2012.0]])}
    both = evaluate_attributes(labels, probs, [AGE, YEAR])
    alone = evaluate_attributes({"age": labels["age"]}, {"age": probs["age"]}, [AGE])
    assert both["summary"] == alone["summary"] and both["instance"] == alone["instance"]
    assert both["tasks"]["age"] == alone["tasks"]["age"]
    assert both["tasks"]["year"]["mae"] == pytest.approx(2 / 3)


def test_the_product_source_reads_the_year_as_a_regression_task(tmp_path):
    from mtl.data.sources import fashion

    source = fashion.load(write_fashion(tmp_path / "f"))
    spec = source.tasks["year"]
    assert spec.kind == REGRESSION and list(source.tasks)[-1] == "year"
    years = source.table.set_index("identity")["year"]
    assert years[100] == 2012.0 and years[300] == 2011.0 and np.isnan(years[200])  # an empty cell: missing
    assert "year" not in [t.name for t in resolve("all", source.tasks)]
    bad = write_fashion(tmp_path / "bad", rows=["1,Men,Apparel,Topwear,Tshirts,Black,Summer,soon,Casual,Tee"])
    with pytest.raises(DataError, match=r"line 2, column 'year': 'soon' is not a number"):
        fashion.load(bad)
    assert HEADER.split(",")[7] == "year"


def test_prepare_fits_the_regression_task_on_the_training_split_only(tmp_path):
    from mtl.data.prepare import prepare_data, task_labels

    data = prepare_data(write_fashion(tmp_path / "f"), "fashion", "articleType,year", rare_threshold=0)
    year = next(t for t in data.tasks if t.name == "year")
    train_years = data.train["year"].to_numpy()
    assert year.center == pytest.approx(np.nanmean(train_years)) and year.spread == pytest.approx(np.nanstd(train_years))
    labels = task_labels(data.val, data.tasks)
    assert labels["year"].dtype == np.float32 and labels["articleType"].dtype == np.int32


def test_the_regression_output_starts_at_the_training_mean_in_the_labels_units():
    from mtl.models.builder import build_model

    model = build_model([AGE, YEAR], (32, 16, 3), width=0.25, private_multipliers=(4, 2))
    assert tuple(model.get_layer("year").output.shape) == (None, 1)
    unit = model.get_layer("year_unit")
    unit.set_weights([np.zeros_like(w) for w in unit.get_weights()])
    out = model.predict(np.zeros((2, 32, 16, 3), np.float32), verbose=0)
    np.testing.assert_allclose(out["year"], 2012.0)
    assert model.get_layer("year_private1").units == 4 * KINDS[REGRESSION].head_size(YEAR)


def test_junk_crops_mark_a_regression_label_missing_with_nan():
    import tensorflow as tf

    from mtl.data.pipeline import add_junk

    labels = {"junk": tf.zeros([4], tf.int32), "year": tf.constant([2012.0, 2013.0, 2014.0, 2015.0]),
              "age": tf.constant([0, 1, 2, 0])}
    _, out = add_junk(tf.ones([4, 8, 4, 3]) * 100, labels, 0.5, tf.constant([1, 2], tf.int64))
    junk = out["junk"].numpy() == 1
    assert junk.sum() == 2
    assert np.isnan(out["year"].numpy()[junk]).all() and (out["age"].numpy()[junk] == -1).all()
    np.testing.assert_array_equal(out["year"].numpy()[~junk], labels["year"].numpy()[~junk])


KIND_BRANCH = re.compile(r"""\bkind\s*(==|!=|\bin\b|\bnot in\b)\s*\(?\s*(BINARY|CATEGORICAL|IDENTITY|REGRESSION|["'](binary|"""
                         r"""categorical|identity|regression)["'])|\[["']kind["']\]\s*(==|!=)""")


def test_few_branches_on_a_kind_name_are_left_outside_the_table():
    hits = [f"{path.relative_to(REPO)}:{i}" for path in sorted((REPO / "mtl").rglob("*.py")) if path.name != "tasks.py"
            for i, line in enumerate(path.read_text().splitlines(), 1) if KIND_BRANCH.search(line)]
    assert len(hits) <= 5, hits
    assert KIND_BRANCH.search('if spec.kind == BINARY:') and KIND_BRANCH.search('t["kind"] == "identity"')


@pytest.mark.slow
def test_a_product_run_trains_evaluates_predicts_exports_and_reports_its_regression_head(tmp_path, capsys):
    from mtl.cli.evaluate import main as evaluate
    from mtl.cli.export import main as export
    from mtl.cli.predict import main as predict
    from mtl.experiment import train
    from mtl.report import render_report

    rows = [f"{500 + i},Men,Apparel,Topwear,{'Tshirts' if i % 2 else 'Shirts'},Black,Summer,{2010 + i % 5}.0,Casual,P{i}"
            for i in range(24)] + [f"{600 + i},Men,Apparel,Topwear,Shirts,Black,Summer,,Casual,Q{i}" for i in range(4)]
    root = write_fashion(tmp_path / "products", rows=rows)
    run = tmp_path / "run"
    cfg = tiny_config(root, data={"format": "fashion", "rare_threshold": 0}, tasks="articleType,year",
                      train={"epochs": 2, "batch_size": 8})
    train(cfg, run)
    tasks = {t["name"]: t for t in json.loads((run / "tasks.json").read_text())}
    assert tasks["year"]["kind"] == REGRESSION and tasks["year"]["spread"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tasks"]["year"]) >= {"mae", "r2", "rmse", "baseline_mae"}
    assert metrics["summary"]["mean_accuracy"] == metrics["tasks"]["articleType"]["accuracy"]  # year is no accuracy
    history = json.loads((run / "history.json").read_text())
    assert {"val_year_mae", "val_year_huber", "val_masked_loss"} <= set(history[-1])
    assert history[-1]["val_masked_loss"] == pytest.approx(history[-1]["val_articleType_xent"]
                                                           + history[-1]["val_year_huber"], rel=1e-5)

    assert evaluate(["--run", str(run), "--data", str(root)]) == 0
    assert re.search(r"year\s+MAE \d", capsys.readouterr().out)

    out = tmp_path / "pred"
    assert predict(["--run", str(run), "--images", str(root / "images"), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame.columns) == ["path", "articleType", "articleType_prob", "year"]
    assert frame["year"].between(1990, 2040).all()

    assert export(["--run", str(run), "--format", "saved_model", "--check", "4"]) == 0
    serving = json.loads((run / "export" / "saved_model" / "model.json").read_text())["serving"]
    assert serving["outputs"]["year"]["shape"] == [None, 1]
    assert serving["parity"]["max_abs_diff"]["year"] < 1e-2  # values near 2012: float32 rounding only

    html = Path(render_report(run, tmp_path / "report" / "index.html")).read_text()
    assert "year predicted against true" in html and "mean absolute error" in html


def test_a_regression_task_s_validation_error_can_be_a_tuning_objective():
    from mtl.tuning.objective import objective_metrics, resolve_objective

    tasks = [AGE, YEAR]
    assert {"val_year_mae", "val_year_huber", "val_masked_loss"} <= set(objective_metrics(tasks))
    assert "val_year_accuracy" not in objective_metrics(tasks)
    objective = resolve_objective("year.mae", tasks)
    assert (objective.name, objective.direction) == ("val_year_mae", "min")
    with pytest.raises(ConfigError, match=r"per regression task: <task>.mae"):
        resolve_objective("year.accuracy", tasks)
