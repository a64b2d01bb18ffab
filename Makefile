# Two commands for new users:  `make train export`  and  `make test`.
# Every target installs what it needs into .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PRESET ?= demo

.PHONY: install train export test lint bench bench-bundle ablation step-time serve index data proto clean help

help:
	@echo "make train export   train the demo teacher + CDD student, export the teacher, student and int8 student"
	@echo "make bench-bundle   a realistic-cost bundle (ResNet-50, 256x128, short run) in fp32 and int8"
	@echo "make test           install and run the whole test suite"
	@echo "make lint | bench | bench-bundle | ablation | step-time | index | serve | data | proto | clean"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev,milvus,ray]"
	# animal-mnist ships its images in the wheel; it declares tensorflow, which we do not need.
	$(PIP) install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

data/synthetic-reid/.complete: | $(STAMP)
	$(PY) -m training.data.synthetic --out data/synthetic-reid

data/animal-mnist/.complete: | $(STAMP)
	$(PY) -m training.data.animal_mnist --out data/animal-mnist

data: data/synthetic-reid/.complete

train: data
	$(PY) -m training.pipeline --preset $(PRESET)

# The teacher first: the student's bundle declares compatibility with it (asymmetric retrieval: student
# queries on a teacher-embedded gallery) once the compatibility gate passes. COMPATIBLE= exports without it.
COMPATIBLE ?= --compatible-with bundles/$(PRESET)-teacher
export: $(STAMP)
	$(PY) -m export --run runs/$(PRESET)/teacher --out bundles/$(PRESET)-teacher
	$(PY) -m export --run runs/$(PRESET)/student --out bundles/$(PRESET) $(COMPATIBLE)
	$(PY) -m export --run runs/$(PRESET)/student --out bundles/$(PRESET)-int8 --precision int8

# Realistic serving cost, not accuracy: a full-width ResNet-50 at 256x128 trained for 2 steps on a small
# synthetic set of 256x128 images, exported through the real chain (gates included) in fp32 and int8.
# A few minutes on 2 cores; the serving and int8 benchmarks use bundles/bench and bundles/bench-int8.
BENCH_DATA := data/bench-reid
BENCH_RUN := runs/bench/teacher

$(BENCH_DATA)/.complete: | $(STAMP)
	$(PY) -m training.data.synthetic --out $(BENCH_DATA) --train-ids 32 --test-ids 24 --images-per-id 8 \
		--cameras 4 --distractors 24 --junk 4 --height 256 --width 128

$(BENCH_RUN)/metrics.json: $(BENCH_DATA)/.complete
	$(PY) -m training --preset demo-teacher --set 'run.out_dir="$(BENCH_RUN)"' --set 'data.root="$(BENCH_DATA)"' \
		--set data.height=256 --set data.width=128 --set model.depth=50 --set model.width=1.0 \
		--set run.epochs=1 --set run.max_steps_per_epoch=2 --set run.eval_every=1 --set data.p=8 --set data.k=4 \
		--set run.progress=false

bench-bundle: $(BENCH_RUN)/metrics.json
	$(PY) -m export --run $(BENCH_RUN) --out bundles/bench --tensorrt off --set batch.max=32
	$(PY) -m export --run $(BENCH_RUN) --out bundles/bench-int8 --precision int8 --set batch.max=32 \
		--set int8.calibration_images=64

index: $(STAMP)
	$(VENV)/bin/cdd-index build --bundle bundles/$(PRESET) --images data/synthetic-reid/bounding_box_test \
		--out indexes/$(PRESET)

serve: $(STAMP)
	$(VENV)/bin/cdd-serve --bundle bundles/$(PRESET) --index indexes/$(PRESET) --host 127.0.0.1 --port 50051

bench: $(STAMP)
	$(PY) -m serving.benchmarks all --out docs

# (a) teacher, (b) CDD, (c) static from scratch, (d) CDD without resetting, (e) prune-then-distill;
# 3 seeds, both datasets (resumable; docs/ablation-*.{md,json} rewritten after every finished run).
ablation: data data/animal-mnist/.complete
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist --seeds 0 1 2 --out docs

step-time: $(STAMP)
	$(PY) -m training.bench_step --preset demo-student --steps 20 --out docs/step_time.json

proto: $(STAMP)
	$(PY) -m serving.proto_build

lint: $(STAMP)
	$(VENV)/bin/ruff check training export serving tests

test: $(STAMP)
	$(VENV)/bin/ruff check training export serving tests
	$(VENV)/bin/pytest

clean:
	rm -rf runs bundles indexes data build
