# Makefile — builds lib/libnanochat.so (C11, OpenMP, OpenBLAS), lib/libnanochat_cuda.so (when nvcc
# exists; CUDA=0 skips it) and the ./nanochat launcher (LuaJIT + readline).
# Targets: all (default), test, bench, cuda, install, clean, deps.
# Missing Debian packages are installed with apt-get when running as root; otherwise the exact
# command is printed and the build stops.

PKGS := luajit libluajit-5.1-dev lua-busted lua-dkjson libopenblas-dev libnuma-dev libzstd-dev libpcre2-dev \
        libreadline-dev pkg-config

CC ?= cc
PREFIX ?= /usr/local
OPT ?= -O2
CFLAGS_BASE := -std=c11 $(OPT) -g -fPIC -fopenmp -pthread -D_GNU_SOURCE -Icore \
               -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -fvisibility=default
AVX2FLAGS := -mavx2 -mfma -mf16c
AVX512FLAGS := -mavx512f -mavx2 -mfma -mf16c
VNNIFLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c
LDLIBS := -lopenblas -lpcre2-8 -lzstd -lm -ldl -lpthread

NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(strip $(NVCC)),)
CUDA ?= 0
else
CUDA ?= 1
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS := -O2 -std=c++17 -Xcompiler -fPIC -Icore \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90

CORE_SRC := $(filter-out core/launcher.c,$(wildcard core/*.c))
KERN_SRC := $(wildcard kernels/cpu/*.c)
LIB_OBJ := $(patsubst %.c,build/%.o,$(CORE_SRC) $(KERN_SRC))
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ := $(patsubst %.cu,build/%.o,$(CUDA_SRC))
CTEST_SRC := $(wildcard spec/c/test_*.c)
CTEST_BIN := $(patsubst spec/c/%.c,build/spec/%,$(CTEST_SRC))

TARGETS := deps lib/libnanochat.so nanochat
ifeq ($(CUDA),1)
TARGETS += lib/libnanochat_cuda.so
endif

.PHONY: all test bench cuda install clean deps
all: $(TARGETS)

# ---- Debian packages ---------------------------------------------------------------------
deps: build/.deps-ok
build/.deps-ok: Makefile
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y $$missing || (apt-get update && apt-get install -y $$missing)) || exit 1; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
	@mkdir -p build && touch $@

# ---- library -----------------------------------------------------------------------------
build/%_avx2.o: %_avx2.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(AVX2FLAGS) -MMD -MP -c $< -o $@

build/%_avx512.o: %_avx512.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(AVX512FLAGS) -MMD -MP -c $< -o $@

build/%_vnni.o: %_vnni.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(VNNIFLAGS) -MMD -MP -c $< -o $@

build/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(EXTRA_CFLAGS) -MMD -MP -c $< -o $@

# AMX tiles (kernels/cpu/amx.c): the instructions run only after the runtime CPUID/OS check
build/kernels/cpu/amx.o: EXTRA_CFLAGS := -mamx-tile -mamx-bf16 -mamx-int8

lib/libnanochat.so: $(LIB_OBJ)
	@mkdir -p lib
	$(CC) -shared -fopenmp -Wl,-z,nodelete -o $@ $^ $(LDLIBS)

# ---- launcher ----------------------------------------------------------------------------
nanochat: core/launcher.c | deps
	$(CC) $(CFLAGS_BASE) $$(pkg-config --cflags luajit) -o $@ $< $$(pkg-config --libs luajit) -lreadline -ldl -lm

# ---- CUDA backend (dlopen'ed by the core on first use) -------------------------------------
cuda: lib/libnanochat_cuda.so
# optim.cu: belt and braces for its CPU-bitwise kernels (they already use __fmul_rn / __fadd_rn)
build/kernels/cuda/optim.o: NVCCFLAGS += -fmad=false
# nn.cu: the CPU reference kernels' f32 operations without contraction (no FMA)
build/kernels/cuda/nn.o: NVCCFLAGS += -fmad=false
build/kernels/cuda/%.o: kernels/cuda/%.cu kernels/cuda/common.cuh core/backend.h core/nanochat.h core/dtype_conv.h core/philox.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

lib/libnanochat_cuda.so: $(CUDA_OBJ)
	@mkdir -p lib
	$(NVCC) -shared -o $@ $^ -L$(CUDA_HOME)/lib64 -Xlinker -rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart

# ---- tests -------------------------------------------------------------------------------
build/spec/%: spec/c/%.c lib/libnanochat.so
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -o $@ $< -Llib -Wl,-rpath,'$$ORIGIN/../../lib' -lnanochat -lm

test: all $(CTEST_BIN)
	@bash spec/run.sh $(CTEST_BIN)

bench: all
	./nanochat tools/bench/ops.lua

install: all
	install -d $(PREFIX)/bin $(PREFIX)/lib/nanochat $(PREFIX)/share/nanochat/include
	install -m 755 nanochat $(PREFIX)/bin/nanochat
	install -m 644 lib/*.so $(PREFIX)/lib/nanochat/
	install -m 644 core/nanochat.h $(PREFIX)/share/nanochat/include/nanochat.h
	cp -r lua recipes tools $(PREFIX)/share/nanochat/
	if [ -d configs ]; then cp -r configs $(PREFIX)/share/nanochat/; fi

clean:
	rm -rf build lib nanochat

-include $(LIB_OBJ:.o=.d)
