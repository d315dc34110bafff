/* core/shards_internal.h — what core/loader.c needs from core/shards.c (never seen by Lua).
 *
 * Promise: nc_shard_load reads and fully validates one shard (header, tokenizer hash when
 * expect_hash is non-empty, zstd payload, checksum) and hands back its raw token array
 * (info->count ids of info->token_bytes bytes each, little-endian), allocated with
 * nc_host_alloc; free it with nc_shard_free_tokens. Thread-safe (no shared state).
 */
#ifndef NC_SHARDS_INTERNAL_H
#define NC_SHARDS_INTERNAL_H

#include "nanochat.h"

nc_status nc_shard_load(const char *path, const char *expect_hash, nc_shard_info *info, void **tokens_out);
void nc_shard_free_tokens(void *tokens, const nc_shard_info *info);

#endif
