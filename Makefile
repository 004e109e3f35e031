# Thin driver around CMake. `make` builds into build/, `make run` starts the
# demo, `make check` runs every test (plain, then address+undefined, then the
# engine under thread sanitizer, then each fuzz harness briefly).
BUILD    ?= build
SANITIZE ?=
JOBS     ?= $(shell nproc)
CONFIG   ?= config/tally.ini
# `make fuzz`: the clang + libFuzzer build and how long each harness runs
# (FUZZ_TARGETS: names such as "record snapshot"; empty means all;
# FUZZ_MERGE=1 adds new coverage to tests/fuzz/corpus/).
FUZZ_BUILD   ?= build-fuzz
FUZZ_TIME    ?= 60
FUZZ_BUDGET  ?= 0
FUZZ_MERGE   ?= 0
FUZZ_TARGETS ?=

.PHONY: all deps run check check-plain check-asan check-tsan check-fuzz clean bench fuzz fuzz-build

all: $(BUILD)/Makefile
	@$(MAKE) --no-print-directory -C $(BUILD) -j$(JOBS)

$(BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(BUILD) -DSANITIZE=$(SANITIZE) >/dev/null

deps:
	@scripts/install-deps

# The admin API's bearer token (config/tally.ini admin.token_file): random,
# readable by its owner only, kept across runs.
run: deps all
	@test -s run/admin.token || (mkdir -p run && umask 077 && \
	  head -c 24 /dev/urandom | base64 | tr -d '/+=' > run/admin.token)
	$(BUILD)/tally run -c $(CONFIG)

check: deps
	@$(MAKE) --no-print-directory check-plain
	@$(MAKE) --no-print-directory check-asan
	@$(MAKE) --no-print-directory check-tsan
	@$(MAKE) --no-print-directory check-fuzz

check-plain:
	@$(MAKE) --no-print-directory BUILD=build all
	cd build && ctest --output-on-failure -j2 --timeout 900

check-asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=address,undefined all
	cd build-asan && ctest --output-on-failure -j2 --timeout 900

check-tsan:
	@$(MAKE) --no-print-directory BUILD=build-tsan SANITIZE=thread all
	cd build-tsan && ctest --output-on-failure -j2 --timeout 900 -L tsan

# Each harness for at most 20 s, all of them within 150 s, under ASan+UBSan.
check-fuzz:
	@$(MAKE) --no-print-directory fuzz FUZZ_TIME=20 FUZZ_BUDGET=150 FUZZ_MERGE=0

$(FUZZ_BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DFUZZ=ON \
	       -DSANITIZE=address,undefined >/dev/null

fuzz-build: $(FUZZ_BUILD)/Makefile
	@cmake --build $(FUZZ_BUILD) --target fuzz_all -- --no-print-directory -j$(JOBS)

fuzz: deps fuzz-build
	python3 tests/fuzz/run_fuzz.py --build $(FUZZ_BUILD) --time $(FUZZ_TIME) \
	  --budget $(FUZZ_BUDGET) $(if $(filter 1,$(FUZZ_MERGE)),--merge) $(FUZZ_TARGETS)

clean:
	rm -rf build build-asan build-tsan $(FUZZ_BUILD)
