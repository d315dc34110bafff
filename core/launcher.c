/* core/launcher.c — the `nanochat` program: LuaJIT with the nanochat Lua library on its path,
 * running scripts, -e chunks and subcommands (lua/nanochat/cli.lua decides which), and the
 * interactive REPL (this file: GNU readline, history, completion, signals).
 *
 * Promise:
 *  - Works from any cwd: the Lua and library directories are found from /proc/self/exe
 *    (realpath). Source tree: <exedir>/lua and <exedir>/lib. Installed (`make install
 *    PREFIX=P`): P/bin/nanochat, P/share/nanochat/lua, P/lib/nanochat. $NANOCHAT_HOME
 *    (with $NANOCHAT_LIBDIR) overrides both. The globals NANOCHAT_HOME (the directory holding
 *    lua/) and NANOCHAT_LIBDIR (the directory holding libnanochat.so) are set before any Lua
 *    code runs; this program does not link libnanochat (the Lua side ffi.load's it), but it
 *    dlopen's it once with RTLD_NODELETE so that lua_close() at exit cannot unload it (and the
 *    OpenMP runtime under its threads).
 *  - The exit status is cli.main's (0 on success, 1 on an error in user code, which prints the
 *    message and a traceback to stderr).
 *  - REPL: prompt "nc> ", "..> " for continuation lines (lua/nanochat/repl.lua reports an
 *    unfinished chunk); history in $NANOCHAT_HISTORY or ~/.nanochat_history, read at start,
 *    appended after every line, capped at HISTORY_MAX lines; TAB completion asks
 *    require('nanochat.repl').complete(text_before_cursor). Ctrl-D exits, Ctrl-C at the prompt
 *    clears the line (and a pending continuation), Ctrl-C during evaluation interrupts the Lua
 *    code with an error "interrupted" (a second Ctrl-C before that happens, e.g. while stuck in
 *    a long C call or a compiled loop, ends the process). Errors in the REPL's own Lua code are
 *    printed and the loop continues: nothing typed at the prompt ends the process except Ctrl-D,
 *    os.exit or that second Ctrl-C.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define HISTORY_MAX 1000
#define PROMPT "nc> "
#define PROMPT_CONT "..> "
#define PATH_BUF (PATH_MAX + 64)   /* a resolved directory plus a short suffix */

static lua_State *g_L;
static volatile sig_atomic_t g_sigint, g_in_eval;
static char g_history[PATH_MAX];
static int g_history_ok;
static int g_complete_ref = LUA_NOREF;

/* ---- paths ----------------------------------------------------------------------------------- */
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void dirname_inplace(char *p) {
    char *s = strrchr(p, '/');
    if (s == p) p[1] = '\0';
    else if (s) *s = '\0';
    else strcpy(p, ".");
}

/* Fills home (directory holding lua/) and libdir. Returns 0 when the Lua files were found. */
static int find_layout(const char *argv0, char *home, char *libdir) {
    char exe[PATH_MAX], probe[PATH_BUF], tmp[PATH_MAX];
    const char *env_home = getenv("NANOCHAT_HOME");
    const char *env_lib = getenv("NANOCHAT_LIBDIR");
    if (env_home && *env_home) {
        snprintf(home, PATH_BUF, "%s", env_home);
        if (env_lib && *env_lib) snprintf(libdir, PATH_BUF, "%s", env_lib);
        else snprintf(libdir, PATH_BUF, "%s/lib", env_home);
        return 0;
    }
    if (!realpath("/proc/self/exe", exe) && !realpath(argv0, exe)) snprintf(exe, sizeof exe, "%s", argv0);
    dirname_inplace(exe);
    /* source tree: <exedir>/lua/nanochat/cli.lua */
    snprintf(probe, sizeof probe, "%s/lua/nanochat/cli.lua", exe);
    if (is_file(probe)) {
        snprintf(home, PATH_BUF, "%s", exe);
        snprintf(libdir, PATH_BUF, "%s/lib", exe);
        if (env_lib && *env_lib) snprintf(libdir, PATH_BUF, "%s", env_lib);
        return 0;
    }
    /* installed: P/bin/nanochat with P/share/nanochat/lua and P/lib/nanochat */
    snprintf(tmp, sizeof tmp, "%s", exe);
    dirname_inplace(tmp);   /* P */
    snprintf(probe, sizeof probe, "%s/share/nanochat/lua/nanochat/cli.lua", tmp);
    if (is_file(probe)) {
        snprintf(home, PATH_BUF, "%s/share/nanochat", tmp);
        snprintf(libdir, PATH_BUF, "%s/lib/nanochat", tmp);
        if (env_lib && *env_lib) snprintf(libdir, PATH_BUF, "%s", env_lib);
        return 0;
    }
    fprintf(stderr, "nanochat: cannot find the nanochat Lua files (looked in %s/lua and %s/share/nanochat/lua; "
                    "set NANOCHAT_HOME)\n", exe, tmp);
    return -1;
}

static void setup_paths(lua_State *L, const char *home, const char *libdir) {
    lua_pushstring(L, home);
    lua_setglobal(L, "NANOCHAT_HOME");
    lua_pushstring(L, libdir);
    lua_setglobal(L, "NANOCHAT_LIBDIR");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", home, home, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_getfield(L, -1, "cpath");
    lua_pushfstring(L, "%s/?.so;%s", libdir, lua_tostring(L, -1));
    lua_setfield(L, -3, "cpath");
    lua_pop(L, 2);
}

/* ---- calling Lua ---------------------------------------------------------------------------- */
static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Push require(modname)[field]; returns 0 on success, else prints the error. */
static int push_module_function(lua_State *L, const char *modname, const char *field) {
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, modname);
    if (lua_pcall(L, 1, 1, -3) != 0) {
        fprintf(stderr, "nanochat: %s\n", lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_getfield(L, -1, field);
    lua_remove(L, -2);   /* module */
    lua_remove(L, -2);   /* traceback */
    if (!lua_isfunction(L, -1)) {
        fprintf(stderr, "nanochat: %s.%s is not a function\n", modname, field);
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* ---- signals -------------------------------------------------------------------------------- */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
    if (g_in_eval) {
        if (g_sigint) {   /* the first one did not get through: give up on this process */
            static const char msg[] = "\nnanochat: interrupted twice (the running code did not stop), exiting\n";
            ssize_t w = write(2, msg, sizeof msg - 1);
            (void)w;
            signal(sig, SIG_DFL);
            raise(sig);
            return;
        }
        g_sigint = 1;
        lua_sethook(g_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    } else {
        g_sigint = 1;
    }
}

static void install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;   /* no SA_RESTART: select() returns EINTR at the prompt */
    sigaction(SIGINT, &sa, NULL);
}

/* ---- history -------------------------------------------------------------------------------- */
static void history_init(void) {
    const char *env = getenv("NANOCHAT_HISTORY");
    const char *home = getenv("HOME");
    if (env && *env) snprintf(g_history, sizeof g_history, "%s", env);
    else if (home && *home) snprintf(g_history, sizeof g_history, "%s/.nanochat_history", home);
    else return;
    using_history();
    stifle_history(HISTORY_MAX);
    int fd = open(g_history, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) return;   /* unwritable: the REPL works without history */
    close(fd);
    g_history_ok = 1;
    history_truncate_file(g_history, HISTORY_MAX);
    read_history(g_history);
}

static void history_add(const char *line) {
    if (!*line || line[strspn(line, " \t")] == '\0') return;
    HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
    if (last && strcmp(last->line, line) == 0) return;
    add_history(line);
    if (g_history_ok) append_history(1, g_history);
}

/* ---- completion ----------------------------------------------------------------------------- */
static int is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == ':';
}

/* every printable ASCII character that is not [A-Za-z0-9_.:] breaks words */
static char g_break_chars[128];

static void init_break_chars(void) {
    int k = 0;
    g_break_chars[k++] = ' ';
    g_break_chars[k++] = '\t';
    g_break_chars[k++] = '\n';
    for (int c = 33; c < 127 && k < (int)sizeof g_break_chars - 1; c++)
        if (!is_word_char((char)c)) g_break_chars[k++] = (char)c;
    g_break_chars[k] = '\0';
}

static char **complete(const char *text, int start, int end) {
    (void)start;
    rl_attempted_completion_over = 1;   /* never fall back to file names */
    rl_completion_append_character = '\0';
    lua_State *L = g_L;
    int top = lua_gettop(L);
    if (g_complete_ref == LUA_NOREF) {
        if (push_module_function(L, "nanochat.repl", "complete") != 0) {
            lua_settop(L, top);
            return NULL;
        }
        g_complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, g_complete_ref);
    lua_pushlstring(L, rl_line_buffer, (size_t)end);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
        lua_settop(L, top);
        return NULL;
    }
    /* Lua's word is the trailing run of [%w_.:]; readline's `text` ends with it and may extend
     * further left only over non-ASCII bytes, which we keep as a prefix. */
    size_t wl = 0;
    while (wl < (size_t)end && is_word_char(rl_line_buffer[end - 1 - wl])) wl++;
    size_t tl = strlen(text);
    size_t pl = wl <= tl ? tl - wl : 0;
    int n = (int)lua_objlen(L, -1);
    char **m = NULL;
    int k = 0;
    if (n > 0) {
        m = calloc((size_t)n + 2, sizeof *m);
        if (!m) { lua_settop(L, top); return NULL; }
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            size_t cl;
            const char *c = lua_tolstring(L, -1, &cl);
            if (c) {
                char *s = malloc(pl + cl + 1);
                if (s) {
                    memcpy(s, text, pl);
                    memcpy(s + pl, c, cl + 1);
                    m[1 + k++] = s;
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    if (k == 0) { free(m); return NULL; }
    /* m[0]: the longest common prefix of the candidates (what readline inserts) */
    size_t lcp = strlen(m[1]);
    for (int i = 2; i <= k; i++) {
        size_t j = 0;
        while (j < lcp && m[i][j] == m[1][j]) j++;
        lcp = j;
    }
    if (k == 1) {
        m[0] = m[1];
        m[1] = NULL;
    } else {
        m[0] = malloc(lcp + 1);
        if (!m[0]) { for (int i = 1; i <= k; i++) free(m[i]); free(m); return NULL; }
        memcpy(m[0], m[1], lcp);
        m[0][lcp] = '\0';
    }
    return m;
}

/* list candidates by their last component (after the final '.' or ':') */
static void display_matches(char **matches, int num, int max_length) {
    (void)max_length;
    char **shown = calloc((size_t)num + 2, sizeof *shown);
    if (!shown) { rl_display_match_list(matches, num, max_length); rl_forced_update_display(); return; }
    int maxl = 0;
    shown[0] = matches[0];   /* the common prefix; rl_display_match_list lists shown[1..num] */
    for (int i = 1; i <= num; i++) {
        char *s = matches[i];
        char *d = strrchr(s, '.'), *c = strrchr(s, ':');
        char *last = d > c ? d : c;
        shown[i] = last && last[1] ? last + 1 : s;
        int l = (int)strlen(shown[i]);
        if (l > maxl) maxl = l;
    }
    rl_display_match_list(shown, num, maxl);
    free(shown);
    rl_forced_update_display();
}

/* ---- the REPL ------------------------------------------------------------------------------- */
static char *g_line;
static int g_line_ready, g_eof;

static void on_line(char *line) {
    if (!line) g_eof = 1;
    g_line = line;
    g_line_ready = 1;
    /* remove now, or readline redisplays the prompt before the result is printed */
    rl_callback_handler_remove();
}

/* Evaluate a chunk with repl.eval; returns 1 when the chunk is incomplete. */
static int eval_chunk(lua_State *L, const char *chunk) {
    int top = lua_gettop(L);
    int incomplete = 0;
    if (push_module_function(L, "nanochat.repl", "eval") != 0) { lua_settop(L, top); return 0; }
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    lua_pushstring(L, chunk);
    g_in_eval = 1;   /* first: a Ctrl-C from here on interrupts the code */
    g_sigint = 0;
    int rc = lua_pcall(L, 1, 1, -3);
    g_in_eval = 0;
    lua_sethook(L, NULL, 0, 0);
    g_sigint = 0;
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        printf("error: %s\n", msg ? msg : "(error object is not a string)");
    } else {
        const char *r = lua_tostring(L, -1);
        incomplete = r && strcmp(r, "incomplete") == 0;
    }
    fflush(stdout);
    lua_settop(L, top);
    return incomplete;
}

static void append_chunk(char **buf, size_t *len, const char *line) {
    size_t ll = strlen(line);
    char *nb = realloc(*buf, *len + ll + 2);
    if (!nb) return;
    if (*len) nb[(*len)++] = '\n';
    memcpy(nb + *len, line, ll + 1);
    *len += ll;
    *buf = nb;
}

/* plain loop for a REPL whose stdin is not a terminal (`nanochat -i < file`) */
static int repl_plain(lua_State *L) {
    char *buf = NULL, *line = NULL;
    size_t len = 0, cap = 0;
    ssize_t r;
    while ((r = getline(&line, &cap, stdin)) >= 0) {
        if (r > 0 && line[r - 1] == '\n') line[r - 1] = '\0';
        append_chunk(&buf, &len, line);
        if (!eval_chunk(L, buf ? buf : "")) { free(buf); buf = NULL; len = 0; }
    }
    free(line);
    free(buf);
    return 0;
}

static int repl(lua_State *L) {
    install_sigint();
    if (push_module_function(L, "nanochat.repl", "setup") == 0) {
        if (lua_pcall(L, 0, 0, 0) != 0) {
            fprintf(stderr, "nanochat: %s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    if (!isatty(0)) return repl_plain(L);

    if (push_module_function(L, "nanochat.repl", "banner") == 0) {
        if (lua_pcall(L, 0, 1, 0) == 0 && lua_isstring(L, -1)) printf("%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    fflush(stdout);

    rl_readline_name = "nanochat";
    rl_catch_signals = 0;   /* SIGINT is ours (on_sigint); readline only sees the pselect() wake-up */
    init_break_chars();
    rl_basic_word_break_characters = g_break_chars;
    rl_completer_word_break_characters = g_break_chars;
    rl_attempted_completion_function = complete;
    rl_completion_display_matches_hook = display_matches;
    /* list candidates on the second TAB even after a partial completion (inputrc may override) */
    rl_variable_bind("show-all-if-unmodified", "on");
    history_init();

    char *buf = NULL;
    size_t len = 0;
    /* SIGINT stays blocked while readline runs and is let through only inside pselect(), so a
     * Ctrl-C can never slip in between the flag check and the wait. */
    sigset_t sigint_only, unblocked;
    sigemptyset(&sigint_only);
    sigaddset(&sigint_only, SIGINT);
    for (;;) {
        g_line = NULL;
        g_line_ready = g_eof = 0;
        sigprocmask(SIG_BLOCK, &sigint_only, &unblocked);
        sigdelset(&unblocked, SIGINT);
        g_sigint = 0;
        rl_callback_handler_install(len ? PROMPT_CONT : PROMPT, on_line);
        int cancelled = 0;
        while (!g_line_ready) {
            if (g_sigint) {   /* Ctrl-C: drop the line and any pending continuation */
                g_sigint = 0;
                rl_free_line_state();
                rl_callback_sigcleanup();
                rl_replace_line("", 0);
                rl_point = rl_end = 0;
                rl_crlf();
                cancelled = 1;
                break;
            }
            fd_set fds;
            FD_ZERO(&fds);
            FD_SET(fileno(rl_instream), &fds);
            int r = pselect(fileno(rl_instream) + 1, &fds, NULL, NULL, NULL, &unblocked);
            if (r < 0) {
                if (errno == EINTR) continue;
                g_eof = 1;
                break;
            }
            rl_callback_read_char();
        }
        sigprocmask(SIG_UNBLOCK, &sigint_only, NULL);
        if (!g_line_ready) rl_callback_handler_remove();
        if (cancelled) {
            free(buf);
            buf = NULL;
            len = 0;
            continue;
        }
        if (g_eof) {
            printf("\n");
            break;
        }
        char *line = g_line;
        history_add(line);
        append_chunk(&buf, &len, line);
        free(line);
        if (!eval_chunk(L, buf ? buf : "")) {
            free(buf);
            buf = NULL;
            len = 0;
        }
    }
    free(buf);
    if (g_history_ok) history_truncate_file(g_history, HISTORY_MAX);
    fflush(stdout);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */
int main(int argc, char **argv) {
    char home[PATH_BUF], libdir[PATH_BUF];
    if (find_layout(argv[0], home, libdir) != 0) return 1;
    /* Pin libnanochat (and with it libgomp/OpenBLAS) in memory: lua_close() unloads FFI
     * libraries, and unloading the OpenMP runtime under its parked worker threads crashes the
     * process at exit. The Lua side's ffi.load of the same path then shares this handle. */
    /* OpenBLAS reads OPENBLAS_CORETYPE once, when loaded; Debian's 0.3.21 misdetects newer CPUs
     * and falls back to its slowest kernels. Same rule as lua/nanochat/core.lua. */
    if (!getenv("OPENBLAS_CORETYPE")) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
            setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            setenv("OPENBLAS_CORETYPE", "Haswell", 0);
    }
    /* Two thread pools share the cores: OpenBLAS's pthreads (sgemm) and libgomp's (our kernels).
     * By default each keeps spinning after its work (OpenBLAS ~2^28 cycles, libgomp 300000 spins),
     * so the pool that runs next competes with the other's spinning threads for the cores; on 2
     * cores that cost the tiny model's training step ~35% (README "Thread pools"). Both runtimes
     * read these once, when loaded; a value the user set wins, and NC_POOL_DEFAULTS=1 keeps the
     * runtimes' own defaults. NC_POOL_APPLIED lists the variables set here, so that a benchmark
     * can start a peer (PyTorch) with the environment the user gave. Same rule as
     * lua/nanochat/core.lua. */
    if (!getenv("NC_POOL_DEFAULTS") || strcmp(getenv("NC_POOL_DEFAULTS"), "1") != 0) {
        static const char *pool_env[][2] = {{"OPENBLAS_THREAD_TIMEOUT", "4"}, {"GOMP_SPINCOUNT", "10000"}};
        char applied[128] = "";
        for (size_t i = 0; i < sizeof pool_env / sizeof pool_env[0]; i++) {
            if (getenv(pool_env[i][0])) continue;
            setenv(pool_env[i][0], pool_env[i][1], 0);
            if (applied[0]) strncat(applied, " ", sizeof applied - strlen(applied) - 1);
            strncat(applied, pool_env[i][0], sizeof applied - strlen(applied) - 1);
        }
        if (applied[0] && !getenv("NC_POOL_APPLIED")) setenv("NC_POOL_APPLIED", applied, 0);
    }
    char libpath[PATH_BUF + 32];
    snprintf(libpath, sizeof libpath, "%s/libnanochat.so", libdir);
    if (is_file(libpath) && !dlopen(libpath, RTLD_LAZY | RTLD_NODELETE)) dlerror();
    lua_State *L = luaL_newstate();
    if (!L) { fprintf(stderr, "nanochat: cannot create a Lua state (out of memory)\n"); return 1; }
    g_L = L;
    luaL_openlibs(L);
    setup_paths(L, home, libdir);

    if (push_module_function(L, "nanochat.cli", "main") != 0) { lua_close(L); return 1; }
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_pushboolean(L, isatty(0));
    int status = 1;
    if (lua_pcall(L, 2, 1, -4) != 0) {
        fprintf(stderr, "nanochat: %s\n", lua_tostring(L, -1));
        status = 1;
    } else if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "repl") == 0) {
        lua_settop(L, 0);
        status = repl(L);
    } else {
        status = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    }
    fflush(stdout);
    fflush(stderr);
    lua_close(L);
    return status;
}
