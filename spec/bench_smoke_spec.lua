-- spec/bench_smoke_spec.lua — the ops benchmark runs end to end and reports well-formed numbers.
--
-- Runs tools/bench/ops.lua in quick mode in a subprocess (./nanochat when the launcher exists,
-- else luajit with LUA_PATH set) and checks that it exits 0 and that its last line is one JSON
-- object whose required keys are positive finite numbers. It asserts NO timing target: wall-clock
-- performance depends on the machine and is reported by the benchmark, never tested.
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local json = require 'dkjson'

local REQUIRED_NUMBERS = {
    'matmul_vs_sgemm', 'elementwise_vs_memcpy', 'ffi_us_per_call', 'ffi_raw_us_per_call', 'threads',
    'matmul_cpu_vs_sgemm', 'elementwise_cpu_vs_memcpy', 'stream_mib',
}
local GEMM_SHAPES = { 'linear_fwd', 'linear_bwd_dx', 'linear_bwd_dw', 'square_1024', 'linear_autograd' }
local STREAM_KERNELS = { 'add', 'mul', 'relu', 'silu', 'gelu', 'exp', 'tanh', 'scale', 'rmsnorm', 'softmax', 'log_softmax' }
local SUBPROCESS_TIMEOUT_S = 300

local function shell_ok(cmd)
    local r = os.execute(cmd)
    return r == 0 or r == true
end

local function executable(path) return shell_ok('test -x ' .. path) end

local function run_quick_bench()
    local cmd
    if executable('./nanochat') then
        cmd = './nanochat tools/bench/ops.lua quick=1'
    else
        cmd = "env LUA_PATH='lua/?.lua;lua/?/init.lua;;' luajit tools/bench/ops.lua quick=1"
    end
    if shell_ok('command -v timeout >/dev/null 2>&1') then
        cmd = 'timeout ' .. SUBPROCESS_TIMEOUT_S .. ' ' .. cmd
    end
    local p = assert(io.popen(cmd .. ' 2>&1; echo "__EXIT__:$?"'))
    local text = p:read('*a')
    p:close()
    local lines = {}
    for line in text:gmatch('[^\n]+') do lines[#lines + 1] = line end
    local code = tonumber((lines[#lines] or ''):match('^__EXIT__:(%d+)$'))
    lines[#lines] = nil
    return code, lines, text
end

local function is_positive_finite(v)
    return type(v) == 'number' and v == v and v > 0 and v < math.huge
end

describe('tools/bench/ops.lua (quick mode)', function()
    local code, lines, text, report

    setup(function()
        code, lines, text = run_quick_bench()
        local last = lines[#lines] or ''
        report = json.decode(last)
    end)

    it('exits 0', function()
        assert.are.equal(0, code, 'benchmark output:\n' .. text)
    end)

    it('prints a JSON object as its last line', function()
        assert.are.equal('table', type(report), 'last line is not JSON:\n' .. tostring(lines[#lines]))
    end)

    it('reports the required keys as positive finite numbers', function()
        for _, k in ipairs(REQUIRED_NUMBERS) do
            assert.is_true(is_positive_finite(report[k]), k .. ' = ' .. tostring(report[k]))
        end
        assert.are.equal('number', type(report.threads))
        assert.are.equal(math.floor(report.threads), report.threads)
    end)

    it('names the CPU kernel', function()
        assert.are.equal('string', type(report.kernel))
        assert.is_true(report.kernel == 'avx512' or report.kernel == 'avx2' or report.kernel == 'scalar', 'kernel = ' .. tostring(report.kernel))
    end)

    it('reports every GEMM shape with positive GFLOP/s and ratio', function()
        assert.are.equal('table', type(report.matmul))
        for _, name in ipairs(GEMM_SHAPES) do
            local r = report.matmul[name]
            assert.are.equal('table', type(r), 'matmul.' .. name .. ' missing')
            for _, k in ipairs { 'raw_gflops', 'gflops', 'ratio', 'cpu_ratio', 'util' } do
                assert.is_true(is_positive_finite(r[k]), 'matmul.' .. name .. '.' .. k .. ' = ' .. tostring(r[k]))
            end
        end
    end)

    it('reports every streaming kernel with positive GB/s and ratio', function()
        assert.are.equal('table', type(report.elementwise))
        for _, name in ipairs(STREAM_KERNELS) do
            local r = report.elementwise[name]
            assert.are.equal('table', type(r), 'elementwise.' .. name .. ' missing')
            for _, k in ipairs { 'gbps', 'ratio', 'kernel_gbps', 'kernel_ratio', 'cpu_ratio', 'base_gbps', 'util' } do
                assert.is_true(is_positive_finite(r[k]), 'elementwise.' .. name .. '.' .. k .. ' = ' .. tostring(r[k]))
            end
        end
    end)
end)
