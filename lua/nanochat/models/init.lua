-- lua/nanochat/models/init.lua — nc.models: model architectures and their config presets.
--
--   nc.models.gpt                  the ternary GPT (models/gpt.lua): gpt.new(cfg), gpt.config(cfg)
--   nc.models.config(name_or_path) a cfg table from configs/models/<name>.lua (or a .lua path),
--                                  fields overridden by an optional second table
--   nc.models.new(cfg)             builds cfg.arch (default 'gpt')
local M = {}

M.gpt = require 'nanochat.models.gpt'

-- repository root, from this file's location (lua/nanochat/models/init.lua)
local function repo_root()
    local src = debug.getinfo(1, 'S').source
    if src:sub(1, 1) ~= '@' then return '.' end
    local dir = src:sub(2):match('^(.*)/lua/nanochat/models/[^/]*$')
    return dir or '.'
end

function M.config(name, overrides)
    if type(name) ~= 'string' or name == '' then error('models.config: expected a config name or path', 2) end
    local path = name
    if not name:find('/', 1, true) and not name:match('%.lua$') then
        path = repo_root() .. '/configs/models/' .. name .. '.lua'
    end
    local chunk, err = loadfile(path)
    if not chunk then error('models.config: cannot load ' .. path .. ': ' .. tostring(err), 2) end
    local cfg = chunk()
    if type(cfg) ~= 'table' then error('models.config: ' .. path .. ' must return a table', 2) end
    for k, v in pairs(overrides or {}) do cfg[k] = v end
    return cfg
end

function M.new(cfg)
    local arch = cfg.arch or 'gpt'
    local mod = M[arch]
    if type(mod) ~= 'table' or not mod.new then error('models.new: unknown arch ' .. tostring(arch), 2) end
    return mod.new(cfg)
end

return M
