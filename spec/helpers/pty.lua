-- spec/helpers/pty.lua — drive a program through a pseudo-terminal from a busted spec (LuaJIT FFI).
--
-- Promise: `pty.spawn(argv, {env = {K = V}, cwd = dir, rows =, cols =})` starts argv[1] (a path)
-- with a pty as its controlling terminal. `p:send(s)` writes keystrokes; `p:expect(text,
-- timeout_s)` waits (bounded, poll-based) until `text` (plain, after stripping terminal escape
-- sequences and carriage returns) appears in the output read since the last successful expect
-- and returns true, the matched output; on timeout or child exit it returns false and everything
-- read. `p:close()` kills the child (SIGKILL if it has not exited) and reaps it; it is safe to
-- call twice and is also run by a finalizer. Everything the child needs is prepared before
-- fork(); the child only calls chdir/execve/_exit.
local ffi = require 'ffi'

ffi.cdef [[
struct nc_spec_winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; };
int forkpty(int *amaster, char *name, const void *termp, const struct nc_spec_winsize *winp);
int execve(const char *path, char *const argv[], char *const envp[]);
int chdir(const char *path);
void _exit(int status);
typedef long nc_spec_ssize_t;
nc_spec_ssize_t read(int fd, void *buf, size_t n);
nc_spec_ssize_t write(int fd, const void *buf, size_t n);
int close(int fd);
struct nc_spec_pollfd { int fd; short events; short revents; };
int poll(struct nc_spec_pollfd *fds, unsigned long nfds, int timeout);
int kill(int pid, int sig);
int waitpid(int pid, int *status, int options);
]]

local C = ffi.C
local forkpty_fn
do
    local ok = pcall(function() return C.forkpty end)
    if ok then forkpty_fn = C.forkpty
    else forkpty_fn = ffi.load('util').forkpty end
end

local SIGKILL, WNOHANG, POLLIN, EINTR = 9, 1, 1, 4

local M = {}
local P = {}
P.__index = P

-- strip CSI/OSC escape sequences and carriage returns from terminal output
function M.clean(s)
    s = s:gsub('\27%[[%d;?]*[%a@`~]', '')
    s = s:gsub('\27%][^\7]*\7', '')
    s = s:gsub('\27[%(%)][%w]', '')
    s = s:gsub('\27[=>]', '')
    s = s:gsub('\r', '')
    s = s:gsub('\7', '')
    return s
end

function M.spawn(argv, opts)
    opts = opts or {}
    -- argv/envp arrays and their strings, kept alive in `keep` until exec
    local keep = {}
    local cargv = ffi.new('char *[?]', #argv + 1)
    for i, a in ipairs(argv) do
        local s = ffi.new('char[?]', #a + 1, a)
        keep[#keep + 1] = s
        cargv[i - 1] = s
    end
    cargv[#argv] = nil
    local env = {}
    for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. '=' .. v end
    table.sort(env)
    local cenv = ffi.new('char *[?]', #env + 1)
    for i, e in ipairs(env) do
        local s = ffi.new('char[?]', #e + 1, e)
        keep[#keep + 1] = s
        cenv[i - 1] = s
    end
    cenv[#env] = nil
    local cwd = opts.cwd and ffi.new('char[?]', #opts.cwd + 1, opts.cwd)
    local ws = ffi.new('struct nc_spec_winsize', opts.rows or 24, opts.cols or 200, 0, 0)
    local master = ffi.new('int[1]')
    local pid = forkpty_fn(master, nil, nil, ws)
    if pid < 0 then error('pty.spawn: forkpty failed (errno ' .. ffi.errno() .. ')') end
    if pid == 0 then
        if cwd ~= nil and cwd and C.chdir(cwd) ~= 0 then C._exit(126) end
        C.execve(cargv[0], cargv, cenv)
        C._exit(127)
    end
    local p = setmetatable({ pid = pid, fd = master[0], raw = '', pos = 1, alive = true, keep = keep }, P)
    p.guard = ffi.gc(ffi.new('int[1]'), function() p:close() end)
    return p
end

function P:send(s)
    local off = 0
    while off < #s do
        local n = C.write(self.fd, ffi.cast('const char *', s) + off, #s - off)
        if n < 0 then
            if ffi.errno() ~= EINTR then return false end
        else
            off = off + tonumber(n)
        end
    end
    return true
end

-- read what is available within timeout_ms; returns false when the child side is gone
local chunk = ffi.new('char[4096]')
function P:pump(timeout_ms)
    if self.fd < 0 then return false end
    local pfd = ffi.new('struct nc_spec_pollfd[1]')
    pfd[0].fd = self.fd
    pfd[0].events = POLLIN
    local r = C.poll(pfd, 1, timeout_ms)
    if r < 0 then return ffi.errno() == EINTR end
    if r == 0 then return true end
    local n = C.read(self.fd, chunk, 4096)
    if n <= 0 then return false end
    local s = ffi.string(chunk, n)
    self.raw = self.raw .. s
    return true
end

-- wait until `text` appears (plain match on the cleaned output after the previous match);
-- bounded by timeout_s seconds. Returns ok, the cleaned output searched.
function P:expect(text, timeout_s)
    local deadline_steps = math.ceil((timeout_s or 10) * 1000 / 50)
    for step = 1, deadline_steps + 1 do
        local clean = M.clean(self.raw)
        local s, e = clean:find(text, self.pos, true)
        if s then
            local seen = clean:sub(self.pos, e)
            self.pos = e + 1
            return true, seen
        end
        if step > deadline_steps or not self:pump(50) then
            clean = M.clean(self.raw)
            s, e = clean:find(text, self.pos, true)
            local seen = clean:sub(self.pos)
            if s then self.pos = e + 1; return true, seen end
            return false, seen
        end
    end
end

-- read for a while and return the cleaned output since the last match (not consumed)
function P:drain(timeout_s)
    local steps = math.ceil((timeout_s or 0.5) * 1000 / 50)
    for _ = 1, steps do if not self:pump(50) then break end end
    return M.clean(self.raw):sub(self.pos)
end

-- everything the child wrote, cleaned
function P:output() return M.clean(self.raw) end

-- wait for the child to exit by itself (bounded); returns its exit status or nil
function P:wait(timeout_s)
    local st = ffi.new('int[1]')
    local steps = math.ceil((timeout_s or 5) * 1000 / 50)
    for _ = 1, steps do
        -- once the pty reports EOF, pump returns at once: sleep so the timeout stays real
        if not self:pump(50) then C.poll(nil, 0, 50) end
        local r = C.waitpid(self.pid, st, WNOHANG)
        if r == self.pid then
            self.alive = false
            local s = st[0]
            if s % 128 == 0 then return math.floor(s / 256) % 256 end
            return -(s % 128)
        end
    end
    return nil
end

function P:close()
    if self.alive then
        C.kill(self.pid, SIGKILL)
        local st = ffi.new('int[1]')
        C.waitpid(self.pid, st, 0)
        self.alive = false
    end
    if self.fd >= 0 then
        C.close(self.fd)
        self.fd = -1
    end
end

return M
