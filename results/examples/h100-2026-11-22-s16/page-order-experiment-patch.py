"""Device-only experiment (session 16): patch inputs._make_tables so FMHA_PAGE_ORDER reorders each
sequence's random pages: 'sorted' (ascending ids) or 'bucket:MB' (ascending MB-sized address
buckets, random inside one). Run on the device copy only."""
import re, pathlib
f = pathlib.Path("fmha_bench/inputs.py")
s = f.read_text()
old = "        pages.append([int(x) for x in pool[start:start + n]])\n"
new = """        ids = [int(x) for x in pool[start:start + n]]
        import os as _os
        order = _os.environ.get("FMHA_PAGE_ORDER", "random")
        if order == "sorted":
            ids.sort()
        elif order.startswith("bucket:"):
            per = max(1, (int(order[7:]) << 20) // (P * p.nhead_k * p.hdim_q * 2))
            ids.sort(key=lambda x: x // per)
        pages.append(ids)
"""
if "FMHA_PAGE_ORDER" in s: raise SystemExit("already patched")
assert old in s
f.write_text(s.replace(old, new))
print("patched")
