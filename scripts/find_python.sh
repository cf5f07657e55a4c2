#!/usr/bin/env sh
# Print the path of a Python 3.8-3.10 interpreter (nnabla 1.39 has wheels for those only).
# Candidates are tested by running them: a pyenv shim that exists but is not
# activated fails `python3.10 -c ''`.
ok() { "$1" -c 'import sys; assert (3, 8) <= sys.version_info[:2] <= (3, 10)' >/dev/null 2>&1; }
for c in python3.10 python3.9 python3.8; do
  if command -v "$c" >/dev/null 2>&1 && ok "$c"; then command -v "$c"; exit 0; fi
done
root=$( (pyenv root) 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.(8|9|10)\.[0-9]+$' | sort -V -r); do
  p="$root/versions/$v/bin/python"
  if [ -x "$p" ] && ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: no Python 3.8, 3.9 or 3.10 found (nnabla 1.39 has wheels for CPython 3.8-3.10 only)." >&2
echo "Install one, e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv', then re-run make." >&2
exit 1
