-- lua/nanochat/layers/init.lua — nc.layers: model building blocks beyond nc.nn's basics.
--   nc.layers.BitLinear — ternary-weight / int8-activation linear with STE (layers/bitlinear.lua)
return {
    BitLinear = require 'nanochat.layers.bitlinear',
}
