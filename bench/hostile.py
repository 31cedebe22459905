#!/usr/bin/env python3
"""Hostile input against the msloss binary: every case must end with a message and exit 1 or 2 (never
a panic's 101, never a signal), within its time and memory bounds, leave no output behind, and change
no input and no device node. Standard library only; run by .ci/run.

    python3 bench/hostile.py [--bin target/release/msloss]
"""
import argparse, hashlib, os, stat, struct, subprocess, sys, tempfile, threading, time, zlib

U64 = str(2**64 - 1)


def npy(path, descr, shape, data=b"", fortran=False):
    """Writes an .npy file by hand (so that headers can lie about their data)."""
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, fortran, "".join(f"{d}, " for d in shape))
    header = header.encode() + b" " * (63 - (len(header) + 10) % 64) + b"\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data)


def f32(n, v=0.5):
    return struct.pack(f"<{n}f", *([v] * n))


def setup(d):
    npy(f"{d}/z.npy", "<f4", (1, 2, 4, 4), f32(32))
    npy(f"{d}/x.npy", "<f4", (1, 1, 4, 4), f32(16))
    npy(f"{d}/zf.npy", "<f4", (1, 2, 4, 4), f32(32), fortran=True)
    npy(f"{d}/lying.npy", "<f4", (1, 2, 100000, 100000), f32(32))
    npy(f"{d}/overflow.npy", "<f4", (2**62, 2**62), f32(4))
    npy(f"{d}/text.npy", "<U3", (1, 2, 4, 4), b"abc" * 32)
    npy(f"{d}/many.npy", "<i4", (64, 64), struct.pack("<4096i", *range(4096)))
    npy(f"{d}/labf.npy", "<i4", (8, 9), struct.pack("<72i", *([1, 2] * 36)), fortran=True)
    npy(f"{d}/lab.npy", "<i4", (8, 9), struct.pack("<72i", *([1, 2] * 36)))
    with open(f"{d}/garbage.npy", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00\xff\xff{{{{")
    with open(f"{d}/empty.png", "wb"):
        pass
    # Found by fuzzing: a header of nested lists (the parser backtracked for minutes), a PNG whose
    # header declares 245 x 50M pixels in 200 bytes, a JPEG declaring 65518 x 250 in 900 bytes.
    nested = b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"[" * 60 + b"}"
    nested += b" " * (63 - (len(nested) + 10) % 64) + b"\n"
    with open(f"{d}/nested.npy", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(nested)) + nested)
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(f"{d}/huge.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 245, 50331660, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    here = os.path.dirname(os.path.abspath(__file__))
    with open(f"{here}/../fuzz/crashes/image/jpeg-declares-16-mpx", "rb") as src, open(f"{d}/short.jpg", "wb") as f:
        f.write(src.read())


def cases(d):
    e = ["energy", "--image", f"{d}/x.npy"]
    return [
        # (name, args, stdout: None | "full" | "closed", allowed exit codes)
        ("bench --iters 2^64-1", ["bench", "--shape", "1,2,1,4,4", "--iters", U64], None, {2}),
        ("bench --shape past memory", ["bench", "--shape", "4096,64,3,4096,4096"], None, {1}),
        ("bench --shape 2^64-1", ["bench", "--shape", f"{U64},2,1,4,4"], None, {2}),
        ("gradcheck --shape past memory", ["gradcheck", "--shape", "4096,64,3,4096,4096"], None, {1}),
        ("gradcheck --tol nan", ["gradcheck", "--shape", "1,2,1,3,3", "--tol", "nan"], None, {2}),
        ("bench --threads 2^40", ["bench", "--shape", "1,2,1,4,4", "--threads", str(2**40)], None, {1, 2}),
        ("segment --size 2^64-1", ["segment", "--size", U64, "--quiet"], None, {1}),
        ("segment --size 10^5", ["segment", "--size", "100000", "--quiet"], None, {1}),
        ("segment --phases 1", ["segment", "--phases", "1", "--quiet"], None, {1, 2}),
        ("segment --phases 0", ["segment", "--phases", "0", "--quiet"], None, {1, 2}),
        ("segment an empty image", ["segment", f"{d}/empty.png", "-k", "2"], None, {1}),
        ("segment --out onto the input", ["segment", f"{d}/x.npy", "-k", "2", "--out", f"{d}/x.npy"], None, {1}),
        ("segment --out /dev/null", ["segment", "--size", "32", "--out", "/dev/null"], None, {1}),
        ("segment to a full stdout", ["segment", "--size", "32", "--out", f"{d}/labels.png"], "full", {1}),
        ("energy --grad-out onto the logits", e + ["--logits", f"{d}/z.npy", "--grad-out", f"{d}/z.npy"], None, {1}),
        ("energy --grad-out /dev/null", e + ["--logits", f"{d}/z.npy", "--grad-out", "/dev/null"], None, {1}),
        ("energy to a full stdout", e + ["--logits", f"{d}/z.npy", "--grad-out", f"{d}/g.npy"], "full", {1}),
        ("energy to a closed stdout", e + ["--logits", f"{d}/z.npy"], "closed", {0, 1}),
        ("energy, Fortran order", e + ["--logits", f"{d}/zf.npy"], None, {1}),
        ("energy, a lying header", e + ["--logits", f"{d}/lying.npy"], None, {1}),
        ("energy, an overflowing header", e + ["--logits", f"{d}/overflow.npy"], None, {1}),
        ("energy, a text dtype", e + ["--logits", f"{d}/text.npy"], None, {1}),
        ("energy, a garbage header", e + ["--logits", f"{d}/garbage.npy"], None, {1}),
        ("energy --delta 1e308", e + ["--logits", f"{d}/z.npy", "--length", "charbonnier", "--delta", "1e308"],
         None, {1}),
        ("bench to a full stdout", ["bench", "--shape", "1,2,1,4,4", "--iters", "1"], "full", {1}),
        ("gradcheck to a full stdout", ["gradcheck", "--shape", "1,2,1,3,3"], "full", {1}),
        ("eval 4096 distinct labels", ["eval", f"{d}/many.npy", f"{d}/many.npy"], None, {1}),
        ("eval, Fortran order", ["eval", f"{d}/labf.npy", f"{d}/lab.npy"], None, {1}),
        ("eval to a full stdout", ["eval", f"{d}/lab.npy", f"{d}/lab.npy"], "full", {1}),
        ("energy, a header nested 60 deep", e + ["--logits", f"{d}/nested.npy"], None, {1}),
        ("eval, a PNG declaring 12 GB", ["eval", f"{d}/huge.png", f"{d}/huge.png"], None, {1}),
        ("segment, a short JPEG declaring 16 Mpx", ["segment", f"{d}/short.jpg", "-k", "2", "--quiet"], None, {1}),
    ]


def snapshot(d):
    """Every file in d with its content's hash, and the device nodes outputs were pointed at."""
    files = {n: hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest() for n in sorted(os.listdir(d))}
    devices = {p: stat.S_ISCHR(os.stat(p).st_mode) for p in ("/dev/null", "/dev/full")}
    return files, devices


def run(binary, args, stdout, limit_s):
    """Runs one case; returns (exit code or -signal, stderr, seconds, peak RSS in KiB from wait4)."""
    out = {"full": open("/dev/full", "wb"), "closed": subprocess.DEVNULL, None: subprocess.DEVNULL}[stdout]
    t = time.monotonic()
    p = subprocess.Popen([binary] + args, stdout=out, stderr=subprocess.PIPE, close_fds=True,
                         preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None)
    timer = threading.Timer(limit_s, p.kill)
    timer.start()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, err.decode(errors="replace"), time.monotonic() - t, usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/msloss")
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--rss-limit-mib", type=float, default=1024.0)
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        setup(d)
        for name, args, stdout, codes in cases(d):
            before = snapshot(d)
            code, err, secs, rss = run(binary, args, stdout, a.time_limit)
            after = snapshot(d)
            problems = []
            if code not in codes:
                problems.append(f"exit {code}, want one of {sorted(codes)}")
            if code != 0 and not err.strip():
                problems.append("no message")
            if "panicked" in err or "memory allocation" in err:
                problems.append("a panic or an abort")
            if secs > a.time_limit:
                problems.append(f"{secs:.1f} s, over {a.time_limit} s")
            if rss > a.rss_limit_mib * 1024:
                problems.append(f"peak RSS {rss / 1024:.0f} MiB, over {a.rss_limit_mib:.0f} MiB")
            if after != before:
                problems.append(f"files or devices changed: {before} -> {after}")
            line = err.strip().splitlines()[-1] if err.strip() else ""
            status = "FAIL " + "; ".join(problems) if problems else "ok"
            print(f"{status:4} | {name} | exit {code} | {secs:.2f} s | {rss / 1024:.0f} MiB | {line[:100]}", flush=True)
            failures += bool(problems)
    print(f"{failures} of {len(cases('.'))} cases failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
