-- tools/bench/export_sizes.lua — what a GGUF export of the e3 model is made of: the file's bytes by
-- role (embedding + head, ternary blocks, mHC, MTP module, exit gate, the rest), for the default
-- looped export in TQ2_0 and TQ1_0 and the unrolled one (`loop=unroll`), plus write / reload time.
--
--   ./nanochat tools/bench/export_sizes.lua [model=configs/models/e3.lua]
--
-- The model is nc.pack of a random-init model (sizes do not depend on the weights), no tokenizer.
-- Roles come from the tensor names of the file itself (gguf.read). Last line: JSON.
local nc = require 'nanochat'
local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
local L = dofile(here .. 'lib.lua')
local args = L.parse_args()

local cfg = dofile(args.model or 'configs/models/e3.lua')
local model = nc.models.gpt.new(cfg)
model:eval()
local src = nc.pack(model)

-- the role of a tensor name
local function role(name)
    if name == 'token_embd.weight' or name == 'output.weight' then return 'embedding + head' end
    if name:find('mhc_', 1, true) then return 'mHC' end
    if name:match('^mtp%.') then return 'MTP module' end
    if name:find('exit_gate', 1, true) then return 'gate' end
    if name:match('^blk%.') then return 'blocks' end
    return 'other'
end
local ROLES = { 'embedding + head', 'blocks', 'mHC', 'MTP module', 'gate', 'other' }

local variants = {
    { name = 'TQ2_0, looped (default)', opts = { type = 'tq2_0' } },
    { name = 'TQ1_0, looped', opts = { type = 'tq1_0' } },
    { name = 'TQ2_0, loop=unroll', opts = { type = 'tq2_0', loop = 'unroll' } },
}
local path = os.tmpname()
local rows, json = {}, { model = args.model or 'configs/models/e3.lua', variants = {} }
for _, v in ipairs(variants) do
    local t0 = L.now()
    local bytes = nc.export.gguf(src, path, v.opts)
    local tw = L.now() - t0
    local f = nc.gguf.read(path)
    local by = {}
    for _, t in ipairs(f.tensors) do
        local r = role(t.name)
        by[r] = (by[r] or 0) + t.nbytes
    end
    t0 = L.now()
    nc.export.load(path)
    local tr = L.now() - t0
    local row = { v.name, bytes }
    for _, r in ipairs(ROLES) do row[#row + 1] = by[r] or 0 end
    row[#row + 1], row[#row + 2] = tw, tr
    rows[#rows + 1] = row
    json.variants[v.name] = { bytes = bytes, roles = by, write_s = L.round(tw, 3), load_s = L.round(tr, 3) }
end
os.remove(path)
print(string.format('GGUF export of %s (%s parameters, random init, no tokenizer): bytes by role',
    json.model, model:num_params()))
local head = { 'export', 'file bytes' }
for _, r in ipairs(ROLES) do head[#head + 1] = r end
head[#head + 1], head[#head + 2] = 'write s', 'load s'
L.print_table(head, rows, { '%s', '%d', '%d', '%d', '%d', '%d', '%d', '%d', '%.2f', '%.2f' })
print(L.json(json))
