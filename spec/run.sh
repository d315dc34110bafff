#!/usr/bin/env bash
# spec/run.sh — the whole test suite: C unit tests (TAP) given as arguments, then every busted
# spec under spec/ (run by LuaJIT, TAP output). Ends with the plain line
# "N passed, N failed, N skipped" and exits non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0 skip=0

count() {   # count TAP lines of file $1; a non-zero exit ($2) without a "not ok" is one failure
  local p f s
  p=$(grep -c '^ok ' "$1"); f=$(grep -c '^not ok ' "$1"); s=$(grep -c '^ok .*# SKIP' "$1")
  if [ "$2" != 0 ] && [ "$f" = 0 ]; then f=1; echo "not ok - $3 exited with status $2"; fi
  pass=$((pass + p - s)); fail=$((fail + f)); skip=$((skip + s))
}

for t in "$@"; do
  echo "# C unit tests: $t"
  timeout 600 "$t" > "$tmp/c.tap" 2>&1; rc=$?
  cat "$tmp/c.tap"
  count "$tmp/c.tap" "$rc" "$t"
done

echo "# busted specs"
files=$(find spec -name '*_spec.lua' | sort)
timeout 3000 busted --lua=luajit -o TAP $files > "$tmp/busted.tap" 2>&1; rc=$?
cat "$tmp/busted.tap"
count "$tmp/busted.tap" "$rc" busted

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
