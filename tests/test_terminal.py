"""What a training run prints: the order of its sections, one compact line per epoch, no
meaningless figures, no TensorFlow start-up noise on stderr, progress bars on a terminal only."""

import io
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, TINY_FLAGS, tiny_config

# TensorFlow's start-up lines that must never reach a user (seen on stderr before the fix)
NOISE = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN custom operations",
         "rebuild TensorFlow with the appropriate compiler flags")

EPOCH_LINE = re.compile(r"^Epoch (\d+)/2  \d+\.\ds  \d+ img/s  masked_loss \d+\.\d{4}  val_masked_loss \d+\.\d{4}  "
                        r"val mean accuracy [01]\.\d{3}  lr \d\.\d\de-\d\d$")


@pytest.fixture(scope="module")
def printed_run(synthetic_root, tmp_path_factory):
    """A tiny two-epoch run trained in process, with every line it prints (TensorBoard off)."""
    from mtl.experiment import train

    lines = []
    out = tmp_path_factory.mktemp("terminal") / "run"
    cfg = tiny_config(synthetic_root, tasks="age,color", train={"epochs": 2, "batch_size": 32, "tensorboard": False})
    metrics = train(cfg, out, command="test", log=lambda text, **kwargs: lines.append(text))
    return out, lines, metrics


@pytest.mark.slow
def test_a_run_prints_its_sections_in_order_with_one_compact_line_per_epoch(printed_run):
    out, lines, _ = printed_run
    starts = ["data: ", "      train ", "tasks: ", "model: ", "training into ", "Epoch 1/2", "Epoch 2/2", "kept epoch ",
              "validation:"]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in starts]
    assert positions == sorted(positions), lines
    assert "market1501_course format" in lines[0] and str(out.parent) not in lines[0]
    assert re.search(r"train \d+ images, \d+ identities; val \d+ images, \d+ identities; 0 unreadable images skipped",
                     lines[1])
    assert lines[2] == "tasks: age (4 classes), upcolor (9 classes), downcolor (10 classes)" or \
        re.fullmatch(r"tasks: age \(\d+ classes\), upcolor \(\d+ classes\), downcolor \(\d+ classes\)", lines[2])
    assert re.search(r"model: resnet_small \(width 0.25\) trunk, weights none .*; [\d,]+ parameters", lines[3])
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert len(epochs) == 2, lines  # one line per epoch, nothing else (no Keras bar, no per-metric line)
    for k, line in enumerate(epochs, 1):
        match = EPOCH_LINE.match(line)
        assert match and match.group(1) == str(k), line
        assert len(line) < 120
    kept = next(line for line in lines if line.startswith("kept epoch "))
    assert re.fullmatch(r"kept epoch [12] \(keep=best: lowest val_masked_loss \d+\.\d{4} at epoch [12]\)", kept)
    table = lines[lines.index("validation:") + 1:]
    assert [row.split()[0] for row in table[:3]] == ["age", "upcolor", "downcolor"]
    assert table[3].startswith("  mean accuracy ")
    assert not (out / "tensorboard").exists()  # train.tensorboard: false


def test_the_epoch_line_hides_what_means_nothing():
    """Validation identity figures (0 by construction) are not shown; the training loss is shown once."""
    from mtl.callbacks import EpochLine, hidden_metric

    line = EpochLine(print, "val_joint_loss", ["age"], epochs=10, images_per_epoch=None, bar=False)
    text = line.line(2, {"loss": 3.0, "masked_loss": 1.25, "joint_loss": 1.5, "val_joint_loss": 1.75,
                         "val_age_accuracy": 0.5, "val_identity_accuracy": 0.0, "val_identity_xent": 0.0,
                         "age_xent": 1.25})
    assert re.fullmatch(r"Epoch  3/10  \d+\.\ds  joint_loss 1\.5000  val_joint_loss 1\.7500  val accuracy 0\.500",
                        text), text
    assert hidden_metric("val_identity_accuracy", ["identity"]) and hidden_metric("val_identity_xent", ["identity"])
    assert not hidden_metric("val_embedding_loss", ["identity"]) and not hidden_metric("identity_accuracy",
                                                                                         ["identity"])
    assert hidden_metric("xent", [], ["age"]) and not hidden_metric("age_xent", [], ["age"])
    # identity only: the monitored loss is the training loss, printed once
    text = EpochLine(print, "loss", [], epochs=2, bar=False).line(0, {"loss": 2.0, "val_identity_accuracy": 0.0})
    assert text.endswith("  loss 2.0000") and text.count("loss") == 1


def test_result_lines_leave_the_identity_classifier_out():
    from mtl.experiment import result_lines

    metrics = {"tasks": {"age": {"accuracy": 0.5, "macro_f1": 0.4, "majority_accuracy": 0.3}},
               "summary": {"mean_accuracy": 0.5, "mA": None},
               "reid": {"plain": {"mAP": 0.4, "rank1": 0.6}, "chance": {"mAP": 0.05}}}
    lines = result_lines(metrics)
    assert lines[0] == "validation:" and lines[1].startswith("  age ")
    assert lines[-1].startswith("re-identification on the validation people: mAP 0.400  rank-1 0.600")
    assert not any("identity " in line for line in lines)


@pytest.mark.slow
def test_training_writes_no_tensorflow_startup_noise(synthetic_root, tmp_path):
    """``TF_CPP_MIN_LOG_LEVEL=0`` makes TensorFlow print its start-up lines here, as it does on
    machines (AMD EPYC) that print them whatever the level: stderr must stay empty."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(synthetic_root), "--tasks", "age",
           "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"), "--verbose", *TINY_FLAGS]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "MTL_PROGRESS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [n for n in NOISE if n in result.stderr], result.stderr
    assert result.stderr.strip() == "", result.stderr
    epoch = [line for line in result.stdout.splitlines() if re.match(r"Epoch 1/1  ", line)]
    # one task: the training loss once (not loss, age_loss and age_xent)
    assert len(epoch) == 1 and re.search(r"  masked_loss \d\.\d{4}  val_masked_loss \d\.\d{4}  val accuracy ",
                                         epoch[0]), result.stdout
    assert "val_age_accuracy: " in result.stdout  # --verbose: Keras's line of every metric as well


def test_import_tensorflow_quietly_drops_the_noise_and_keeps_real_warnings(tmp_path):
    """The first ``import tensorflow`` of a command runs with stderr (descriptor 2) captured: a
    stand-in package writes TensorFlow's noise and one real warning straight to descriptor 2."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import os
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
                    b"I0000 00:00:1796076450.801360   32294 cpu_feature_guard.cc:227] This TensorFlow binary is "
                    b"optimized to use available CPU instructions in performance-critical operations.\\n"
                    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
                    b"with the appropriate compiler flags.\\n"
                    b"I0000 00:00:1796076450.9   32294 port.cc:153] oneDNN custom operations are on. You may see "
                    b"slightly different numerical results.\\n"
                    b"W0000 00:00:1796076451.0   32294 real.cc:1] a real warning\\n")
        LOADED = True
    """))
    code = ("import sys; from mtl.cli.common import quiet_tensorflow_import; quiet_tensorflow_import(); "
            "print('tensorflow' in sys.modules); import tensorflow; print(tensorflow.LOADED)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # nothing imported before the command asks for it
    assert result.stderr == "W0000 00:00:1796076451.0   32294 real.cc:1] a real warning\n"


def test_real_tensorflow_imports_quietly():
    code = "from mtl.cli.common import import_tensorflow_quietly; import_tensorflow_quietly(); import keras"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from mtl import progress as progress_module

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("MTL_PROGRESS", raising=False)
    log, terminal = io.StringIO(), Terminal()
    monkeypatch.setattr(sys, "stderr", log)
    assert not progress_module.bars_enabled()
    assert list(progress_module.progress(range(500), desc="checking images")) == list(range(500))
    assert log.getvalue() == ""  # a log file gets no bar
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_module.bars_enabled()
    list(progress_module.progress(range(500), desc="checking images"))
    assert "checking images" in terminal.getvalue()
    monkeypatch.setenv("MTL_PROGRESS", "0")
    assert not progress_module.bars_enabled(terminal)
    monkeypatch.setenv("MTL_PROGRESS", "1")
    assert progress_module.bars_enabled(log)
