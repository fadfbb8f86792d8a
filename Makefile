# passerelle: an API gateway in C whose every policy is a Lua script.
#   make deps   install the Debian packages (run as root, or with sudo available)
#   make        build ./passerelle
#   make run    start the gateway on examples/quickstart.yaml with a demo upstream
#   make test   every suite: C unit tests (ASan+UBSan), Lua specs, end-to-end tests
#   make bench  the shared benchmark rig against nginx and HAProxy

CC      ?= cc
PKGS    := libevent openssl yaml-0.1 lmdb
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes -D_GNU_SOURCE \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -llua5.1-cjson -lm

SRCS    := $(wildcard gateway/*.c)
OBJS    := $(patsubst gateway/%.c,build/obj/%.o,$(SRCS))
HDRS    := $(wildcard gateway/*.h)

# Debian packages: build, run, test. LuaJIT comes from libluajit2-5.1-dev (OpenResty's branch);
# Debian's other LuaJIT dev package conflicts with it and would remove nginx's Lua module.
DEB_PKGS := gcc make libc6-dev pkg-config libevent-dev libssl-dev libyaml-dev liblmdb-dev \
            libjwt-dev libluajit2-5.1-dev lua-cjson lua-cjson-dev python3 python3-pytest curl \
            openssl sslscan python3-cryptography python3-jwt python3-websockets python3-autobahn
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PYTHON  := /usr/bin/python3

.PHONY: all deps run test unit lua-spec e2e e2e-asan bench icount clean
all: passerelle

passerelle: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $(OBJS) $(LDLIBS)

build/obj/%.o: gateway/%.c $(HDRS) | build/obj
	$(CC) $(CFLAGS) -c -o $@ $<

build/obj build/test:
	mkdir -p $@

deps:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove $(DEB_PKGS)

run: passerelle
	./examples/run-quickstart.sh

# ---- tests ----

TEST_CFLAGS := -std=gnu11 -O1 -g -Wall -Wextra -D_GNU_SOURCE -fno-omit-frame-pointer \
               -fsanitize=address,undefined -fno-sanitize-recover=undefined \
               $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
TEST_LIBS   := $(LDLIBS)
UNIT_TESTS  := $(patsubst spec/unit/%_test.c,build/test/%_test,$(wildcard spec/unit/*_test.c))

# Extra sources each unit test links besides the module it #includes (default: util.c).
# The configuration loader and what its sections use; genfiles.c with what it validates.
CONFIG_SRCS := gateway/config.c gateway/config_tls.c gateway/config_jwt.c gateway/config_ws.c gateway/jwt.c \
               gateway/json.c gateway/addr.c gateway/route.c gateway/yamltree.c
GENFILES_SRCS := gateway/genfiles.c gateway/tls.c gateway/io.c gateway/jwt_provider.c
TEST_DEPS_http     := gateway/util.c
TEST_DEPS_addr     := gateway/util.c
TEST_DEPS_route    := gateway/util.c
TEST_DEPS_config   := gateway/util.c gateway/addr.c gateway/route.c gateway/yamltree.c \
                      gateway/config_tls.c gateway/config_jwt.c gateway/config_ws.c gateway/jwt.c \
                      gateway/json.c
TEST_DEPS_yamltree := gateway/util.c
TEST_DEPS_pool     := gateway/util.c
TEST_DEPS_control := gateway/util.c gateway/log.c
TEST_DEPS_store := gateway/util.c gateway/log.c
TEST_DEPS_keys := gateway/util.c gateway/log.c gateway/store.c
TEST_DEPS_tls := gateway/util.c gateway/log.c gateway/io.c gateway/genfiles.c \
                 gateway/jwt_provider.c $(CONFIG_SRCS)
TEST_DEPS_json := gateway/util.c
TEST_DEPS_ws := gateway/util.c
TEST_DEPS_jwt := gateway/util.c gateway/log.c $(GENFILES_SRCS) $(filter-out gateway/jwt.c,$(CONFIG_SRCS))
build/test/jwt_test: TEST_LIBS += -ljwt

build/test/%_test: spec/unit/%_test.c $(HDRS) $(SRCS) spec/support/test.h | build/test
	$(CC) $(TEST_CFLAGS) -o $@ $< $(or $(TEST_DEPS_$*),gateway/util.c) $(TEST_LIBS)

unit: $(UNIT_TESTS)
	@spec/run-all unit

lua-spec: build/luarun
	@spec/run-all lua

e2e: passerelle
	@spec/run-all e2e

# The whole gateway under ASan+UBSan, for a second pass of the end-to-end suites: memory errors
# and leaks in the real request, reload and shutdown paths fail the test that caused them.
build/passerelle-asan: $(SRCS) $(HDRS) build/gen/lua_sdk.c
	$(CC) $(TEST_CFLAGS) -o $@ $(SRCS) build/gen/lua_sdk.c $(TEST_LIBS)

e2e-asan: build/passerelle-asan
	@spec/run-all e2e-asan

test: passerelle build/passerelle-asan build/luarun $(UNIT_TESTS)
	@spec/run-all all

# ---- benchmarks (see ../shared/bench/README.md) ----

BENCH_CASES ?= nginx haproxy gw gw-close
bench: passerelle
	GATEWAY_START='bench/start-gw.sh' CASES='$(BENCH_CASES)' ../shared/bench/anchors.sh

icount: passerelle
	GATEWAY_START='bench/start-gw.sh' CASES='$(BENCH_CASES)' ../shared/bench/icount.sh

# WebSocket relay (messages/s, proxy CPU µs/message vs nginx's relay) and memory per idle
# WebSocket (issue 9); runs ./passerelle as it is (build it first). See bench/ws-bench.sh.
.PHONY: bench-ws
bench-ws:
	bench/ws-bench.sh
bench-ws-icount: ; bench/ws-icount.sh

clean:
	rm -rf build passerelle

# ---- Lua: LuaJIT, the embedded SDK, tools/luabc (issue 5) ----
# gateway/lua*.c link LuaJIT from libluajit2-5.1-dev (not the conflicting package, see DEB_PKGS). The
# SDK in lua/ is compiled to bytecode by build/luabc (built from tools/luabc.c against the same
# LuaJIT) into build/gen/lua_sdk.c, which is linked into ./passerelle: no Lua file is read at run
# time. docs/lua.md describes the bridge.
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit 2>/dev/null)
LUA_SDK_SRCS  := $(sort $(wildcard lua/pgw/*.lua lua/pgw/*/*.lua))

CFLAGS        += $(LUAJIT_CFLAGS)
LDLIBS        += $(LUAJIT_LIBS)
TEST_CFLAGS   += $(LUAJIT_CFLAGS)
TEST_LIBS     += $(LUAJIT_LIBS)
OBJS          += build/obj/lua_sdk.o

passerelle: build/obj/lua_sdk.o

build/luabc: tools/luabc.c | build/obj
	$(CC) $(CFLAGS) -o $@ $< $(LUAJIT_LIBS)

build/gen/lua_sdk.c: build/luabc $(LUA_SDK_SRCS) | build/gen
	build/luabc -o $@ $(LUA_SDK_SRCS)

build/obj/lua_sdk.o: build/gen/lua_sdk.c gateway/lua.h gateway/pgw.h | build/obj
	$(CC) $(CFLAGS) -c -o $@ $<

build/gen:
	mkdir -p $@

# The Lua specs' interpreter (spec/run-all lua): the `luajit` command-line package must not be
# installed (see DEB_PKGS), so a few lines of C run spec/support/runner.lua against the same LuaJIT.
build/luarun: tools/luarun.c | build/obj
	$(CC) $(CFLAGS) -o $@ $< $(LUAJIT_LIBS)

TEST_DEPS_lua := gateway/util.c gateway/log.c gateway/lua_pattern.c build/gen/lua_sdk.c
build/test/lua_test: build/gen/lua_sdk.c
TEST_DEPS_lua_util := gateway/util.c gateway/log.c gateway/lua.c gateway/lua_pattern.c \
                      build/gen/lua_sdk.c
build/test/lua_util_test: build/gen/lua_sdk.c
TEST_DEPS_lua_ip := gateway/util.c gateway/log.c gateway/lua.c gateway/lua_pattern.c gateway/addr.c \
                    build/gen/lua_sdk.c
build/test/lua_ip_test: build/gen/lua_sdk.c
TEST_DEPS_lua_http := gateway/lua_http.c gateway/http.c gateway/lua.c gateway/lua_pattern.c gateway/util.c \
                      gateway/log.c $(GENFILES_SRCS) $(CONFIG_SRCS) build/gen/lua_sdk.c
build/test/lua_http_test: build/gen/lua_sdk.c

# The cost of running policies with the JIT off (numbers in docs/lua.md); not part of `make test`.
lua-bench: build/lua_bench
	build/lua_bench

build/lua_bench: bench/lua_jitoff.c gateway/lua.c gateway/lua_pattern.c gateway/lua.h \
                 build/gen/lua_sdk.c | build/obj
	$(CC) $(CFLAGS) -o $@ $< gateway/util.c gateway/log.c gateway/lua_pattern.c \
	    build/gen/lua_sdk.c $(LUAJIT_LIBS) -lm

.PHONY: lua-bench
