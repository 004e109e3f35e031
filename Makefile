# Thin driver around CMake. `make` builds into build/, `make run` starts the
# demo, `make check` runs every test (plain, then address+undefined, then the
# engine under thread sanitizer).
BUILD    ?= build
SANITIZE ?=
JOBS     ?= $(shell nproc)
CONFIG   ?= config/tally.ini

.PHONY: all deps run check check-plain check-asan check-tsan clean bench

all: $(BUILD)/Makefile
	@$(MAKE) --no-print-directory -C $(BUILD) -j$(JOBS)

$(BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(BUILD) -DSANITIZE=$(SANITIZE) >/dev/null

deps:
	@scripts/install-deps

run: deps all
	$(BUILD)/tally run -c $(CONFIG)

check: deps
	@$(MAKE) --no-print-directory check-plain
	@$(MAKE) --no-print-directory check-asan
	@$(MAKE) --no-print-directory check-tsan

check-plain:
	@$(MAKE) --no-print-directory BUILD=build all
	cd build && ctest --output-on-failure -j2 --timeout 900

check-asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=address,undefined all
	cd build-asan && ctest --output-on-failure -j2 --timeout 900

check-tsan:
	@$(MAKE) --no-print-directory BUILD=build-tsan SANITIZE=thread all
	cd build-tsan && ctest --output-on-failure -j2 --timeout 900 -L tsan

clean:
	rm -rf build build-asan build-tsan
