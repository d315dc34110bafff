-- lua/nanochat/pack.lua — `nc.pack(model_or_checkpoint_dir, opts)` → packed inference Engine
-- (see lua/nanochat/engine.lua).
return function(...) return require('nanochat.engine').pack(...) end
