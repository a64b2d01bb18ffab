# Two commands for new users:  `make train export`  and  `make test`.
# Every target installs what it needs into .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PRESET ?= demo

.PHONY: install train export test test-loaded mutation lint bench bench-serve bench-bundle ablation ablation-folds ablation-study ablation-data ablation-refine-start step-time \
	serve \
	index data proto clean help results results-collect

help:
	@echo "make train export   train the demo teacher, CDD student and refine stage; export teacher, student, int8 student"
	@echo "make bench-bundle   a realistic-cost bundle (ResNet-50, 256x128, short run) in fp32 and int8"
	@echo "make test           install and run the whole test suite"
	@echo "make results        render the README's and docs' results tables from the committed results files"
	@echo "make results-collect   copy the finished demo runs' metrics to docs/results/ (then make results)"
	@echo "make test-loaded    make test while two CPU-bound processes keep the cores busy"
	@echo "make mutation       targeted mutants of the mechanisms users rely on: killed / survived"
	@echo "make ablation-data DATA=PATH   the ablation on your own class folders (PATH/<class>/*.jpg)"
	@echo "make lint | bench | bench-serve | bench-bundle | ablation | ablation-folds | ablation-refine-start | step-time | index | serve | data | proto | clean"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[train,export,dev,milvus,ray]"
	# animal-mnist ships its images in the wheel; it declares tensorflow, which we do not need.
	$(PIP) install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

data/synthetic-reid/.complete: | $(STAMP)
	$(PY) -m training.data.synthetic --out data/synthetic-reid

data/animal-mnist/.complete: | $(STAMP)
	$(PY) -m training.data.animal_mnist --out data/animal-mnist

# animal-mnist's class folds 1-5 (other classes held out; fold 0 is data/animal-mnist)
data/animal-mnist-fold-%/.complete: | $(STAMP)
	$(PY) -m training.data.animal_mnist --out data/animal-mnist-fold-$* --fold $*

data: data/synthetic-reid/.complete

train: data
	$(PY) -m training.pipeline --preset $(PRESET)

# The teacher first: the student's bundle declares compatibility with it (asymmetric retrieval: student
# queries on a teacher-embedded gallery) once the compatibility gate passes. COMPATIBLE= exports without it.
COMPATIBLE ?= --compatible-with bundles/$(PRESET)-teacher
# The shipped student: the refine stage's run when the preset family has one (training/pipeline.py), else the
# CDD student's.
STUDENT_RUN ?= $(if $(wildcard training/presets/$(PRESET)-refine.toml),runs/$(PRESET)/refine,runs/$(PRESET)/student)
export: $(STAMP)
	$(PY) -m export --run runs/$(PRESET)/teacher --out bundles/$(PRESET)-teacher
	@# A failed compatibility gate (exit 3) declares nothing: the student is then exported without the declaration.
	$(PY) -m export --run $(STUDENT_RUN) --out bundles/$(PRESET) $(COMPATIBLE); rc=$$?; \
	if [ $$rc -eq 3 ] && [ -n "$(COMPATIBLE)" ]; then \
		echo "export: the compatibility gate failed (above); bundles/$(PRESET) is exported without declaring compatibility"; \
		$(PY) -m export --run $(STUDENT_RUN) --out bundles/$(PRESET); \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi
	$(PY) -m export --run $(STUDENT_RUN) --out bundles/$(PRESET)-int8 --precision int8

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
		--quiet --resume

bench-bundle: $(BENCH_RUN)/metrics.json
	$(PY) -m export --run $(BENCH_RUN) --out bundles/bench --tensorrt off --set batch.max=32
	$(PY) -m export --run $(BENCH_RUN) --out bundles/bench-int8 --precision int8 --set batch.max=32 \
		--set int8.calibration_images=64

index: $(STAMP)
	$(VENV)/bin/cdd-index build --bundle bundles/$(PRESET) --images data/synthetic-reid/bounding_box_test \
		--out indexes/$(PRESET)

serve: $(STAMP)
	$(VENV)/bin/cdd-serve --bundle bundles/$(PRESET) --index indexes/$(PRESET) --host 127.0.0.1 --port 50051

# docs/serve.{md,json,png}: bare sync / aio floors and cdd-serve on bundles/demo (and bundles/bench from
# make bench-bundle, when present), 16 callers from a 2-process load generator.
bench-serve: $(STAMP)
	$(PY) -m serving.benchmarks serve --bundle bundles/demo --realistic bundles/bench --load-processes 2 --out docs

bench: $(STAMP)
	$(PY) -m serving.benchmarks all --out docs
	$(PY) -m training.results stamp --force docs/benchmarks.json
	$(PY) -m training.results render

# (a) teacher, (b) CDD, (c) static from scratch, (d) CDD without resetting, (e) prune-then-distill with CDD's
# channels, (f) filter-L1 pruning then distill, (g) born-again full width, (h) CDD + refine stage, (e+) (e) as
# long as (b) + (h); synthetic 3 seeds, animal-mnist 8 (its teachers differ a lot by seed)
# (resumable; docs/ablation-<dataset>.json rewritten after every finished run, paired by seed).
ablation: data data/animal-mnist/.complete
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist --seeds 0 1 2 3 4 5 6 7 --out docs
	for d in synthetic animal-mnist; do $(PY) -m training.results stamp --force docs/ablation-$$d.json; done
	$(PY) -m training.results render

# The same comparison on your own class folders (DATA/<class>/*.jpg, or DATA/train/<class>/ + DATA/test/<class>/),
# every variant, animal-mnist's protocol at 64x32 (resumable; tables in $(ABLATION_OUT)/ablation-NAME.md):
#   make ablation-data DATA=/data/products [NAME=products] [SEEDS="0 1 2 3 4"] [ABLATION_SET="data.height=64"]
SEEDS ?= 0 1 2 3 4
ABLATION_OUT ?= runs/ablation-data/results
ablation-data: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make ablation-data DATA=/path/to/class/folders [NAME=name] [SEEDS=\"0 1 2\"]" >&2; exit 2; }
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --folder "$(if $(NAME),$(NAME)=)$(DATA)" --seeds $(SEEDS) \
		--runs runs/ablation-data --out $(ABLATION_OUT) $(foreach s,$(ABLATION_SET),--set $(s))

# The animal-mnist comparison averaged over its six class folds (fold 0 is `make ablation`'s runs; seeds 0-4 of
# folds 1-5 here, every variant but (c), (d) and (e+)); then two CDD study variants (the schedule's curve, the
# paper's ratio) on all six folds, seeds 0-4; tables animal-mnist-folds* in docs/ablation.md.
FOLD_DATA = $(foreach f,1 2 3 4 5,data/animal-mnist-fold-$(f)/.complete)
ablation-folds: data/animal-mnist/.complete $(FOLD_DATA)
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist-fold-1 animal-mnist-fold-2 \
		animal-mnist-fold-3 --seeds 0 1 2 3 4 --out docs --stem ablation-animal-mnist-folds \
		--variants cdd prune-distill l1-distill born-again refine
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist-fold-4 animal-mnist-fold-5 \
		--seeds 0 1 2 3 4 --out docs --stem ablation-animal-mnist-folds-4-5 \
		--variants cdd prune-distill l1-distill born-again refine
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist animal-mnist-fold-1 animal-mnist-fold-2 \
		animal-mnist-fold-3 animal-mnist-fold-4 animal-mnist-fold-5 --seeds 0 1 2 3 4 --out docs \
		--stem ablation-animal-mnist-folds-study --variants cdd prune-distill cdd-cubic cdd-ratio-0.5
	for f in folds folds-4-5 folds-study; do $(PY) -m training.results stamp --force docs/ablation-animal-mnist-$$f.json; done
	$(PY) -m training.results render

# Where the refine stage starts and in which form: (h0) from the teacher in CDD's training form, (hp) from CDD's
# weights in the plain slim form, beside the baselines of the same seeds: synthetic seeds 0-2, animal-mnist's six
# folds seeds 0-4, and (e+) on the six folds (resumable; tables refine-start-*, animal-mnist-folds-long*).
REFINE_START_VARIANTS = cdd prune-distill l1-distill born-again refine refine-from-teacher refine-plain
ablation-refine-start: data data/animal-mnist/.complete $(FOLD_DATA)
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs \
		--stem ablation-synthetic-refine-start --variants $(REFINE_START_VARIANTS) prune-distill-long
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist animal-mnist-fold-1 animal-mnist-fold-2 \
		animal-mnist-fold-3 animal-mnist-fold-4 animal-mnist-fold-5 --seeds 0 1 2 3 4 --out docs \
		--stem ablation-animal-mnist-folds-refine-start --variants $(REFINE_START_VARIANTS)
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist animal-mnist-fold-1 animal-mnist-fold-2 \
		animal-mnist-fold-3 animal-mnist-fold-4 animal-mnist-fold-5 --seeds 0 1 2 3 4 --out docs \
		--stem ablation-animal-mnist-folds-long --variants prune-distill refine refine-plain prune-distill-long
	for f in synthetic-refine-start animal-mnist-folds-refine-start animal-mnist-folds-long; do \
		$(PY) -m training.results stamp --force docs/ablation-$$f.json; done
	$(PY) -m training.results render

# What makes CDD win: the CDD student with one setting changed (schedule, fill, init, ratio), same teachers.
ablation-study: data
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs --name study \
		--variants cdd-no-schedule cdd-cubic cdd-no-fill cdd-shrink-end-0.7 cdd-shrink-end-0.9 cdd-scratch \
		cdd-ratio-0.5 cdd-ratio-0.5-no-fill cdd-lr-flat-to-final-size

# README.md and docs/*.md tables between <!-- results:NAME --> markers, from committed results files
# (training/results/registry.py names them); tests/training/test_results_tables.py fails when one is stale.
results: $(STAMP)
	$(PY) -m training.results render

results-collect: $(STAMP)
	$(PY) -m training.results collect --run runs/$(PRESET)/teacher --out docs/results/$(PRESET)-teacher.json
	$(PY) -m training.results collect --run runs/$(PRESET)/student --out docs/results/$(PRESET)-student.json
	if [ -d runs/$(PRESET)/refine ]; then $(PY) -m training.results collect --run runs/$(PRESET)/refine \
		--out docs/results/$(PRESET)-refine.json; fi

step-time: $(STAMP)
	$(PY) -m training.bench_step --preset demo-student --steps 20 --out docs/step_time.json
	$(PY) -m training.results stamp --force docs/step_time.json
	$(PY) -m training.results render

proto: $(STAMP)
	$(PY) -m serving.proto_build

# The GPU paths run once on a GPU (docs/gpu.md): GPU-marked tests, an fp16 TensorRT export of the demo student
# with its parity gate, Search through cdd-serve on TensorRT, cdd-bench engine TensorRT vs ONNX Runtime CUDA vs
# CPU; results written to docs/gpu.md. GPU_PYTHON: a Python with the GPU packages (docs/gpu.md, "Installing").
GPU_PYTHON ?= $(PY)
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) -m serving.benchmarks.gpu_check --run $(STUDENT_RUN) --doc docs/gpu.md

lint: $(STAMP)
	$(VENV)/bin/ruff check cdd_common training export serving tests

test: $(STAMP)
	$(VENV)/bin/ruff check cdd_common training export serving tests
	$(VENV)/bin/pytest

# The suite must not depend on how fast or idle the machine is: the same run beside BUSY CPU-bound processes.
BUSY ?= 2
test-loaded: $(STAMP)
	bash tests/tools/test_loaded.sh $(BUSY)

# Not part of `make test` (minutes): each mutant of tests/tools/mutants.py applied in turn, its tests run.
mutation: $(STAMP)
	$(PY) tests/tools/mutation.py $(if $(ONLY),--only "$(ONLY)")

clean:
	rm -rf runs bundles indexes data build
