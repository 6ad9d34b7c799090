"""Plots the reconcile curve (tests/bench/reconcile.sh, RECONCILE_CURVE) as an SVG, no libraries:
time to all Ready and peak/settled RSS against the number of sources, with the goals drawn in.

  plot_curve.py CURVE_TSV OUT_SVG [BEFORE_TSV]

With BEFORE_TSV (an earlier run of the same curve), its lines are drawn dashed beside the new ones.
"""

import csv
import sys

WIDTH, HEIGHT, PAD = 420, 300, 56


def panel(x0, title, xs, series, goal, unit):
    """One chart: `series` is [(label, colour, ys[, own xs: drawn dashed])], `goal` a horizontal
    line (value, label)."""
    top = max([goal[0]] + [y for _, _, ys, *_ in series for y in ys]) * 1.15
    right = max(list(xs) + [x for s in series if len(s) > 3 for x in s[3]]) * 1.05
    px = lambda x: x0 + PAD + (WIDTH - 2 * PAD) * x / right
    py = lambda y: HEIGHT - PAD + -(HEIGHT - 2 * PAD) * y / top
    out = [f'<text x="{x0 + WIDTH / 2}" y="24" text-anchor="middle" font-size="14">{title}</text>']
    out.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(right)}" y2="{py(0)}" stroke="black"/>')
    out.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(top)}" stroke="black"/>')
    for x in xs:
        out.append(f'<text x="{px(x)}" y="{py(0) + 16}" text-anchor="middle" font-size="10">{x:,}</text>')
    for i in range(5):
        y = top * i / 4
        out.append(f'<text x="{px(0) - 6}" y="{py(y) + 4}" text-anchor="end" font-size="10">{y:.0f}</text>')
    out.append(f'<text x="{x0 + WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle" font-size="11">sources</text>')
    out.append(f'<text x="{x0 + 14}" y="{HEIGHT / 2}" font-size="11" transform="rotate(-90 {x0 + 14} {HEIGHT / 2})" text-anchor="middle">{unit}</text>')
    out.append(f'<line x1="{px(0)}" y1="{py(goal[0])}" x2="{px(right)}" y2="{py(goal[0])}" stroke="grey" stroke-dasharray="5,4"/>')
    out.append(f'<text x="{px(right)}" y="{py(goal[0]) - 4}" text-anchor="end" font-size="10" fill="grey">{goal[1]}</text>')
    for n, (label, colour, ys, *rest) in enumerate(series):
        xs_here = rest[0] if rest else xs
        dash = ' stroke-dasharray="3,3" stroke-opacity="0.6"' if rest else ""
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs_here, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in zip(xs_here, ys):
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{px(0) + 8}" y="{py(top) + 14 + 14 * n}" font-size="11" fill="{colour}">{label}</text>')
    return out


def read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [int(r["sources"]) for r in rows], lambda key: [float(r[key]) for r in rows]


def main():
    xs, num = read(sys.argv[1])
    time = [("start to all Ready", "#1f77b4", num("seconds"))]
    memory = [("peak RSS", "#d62728", num("peak_rss_mib")), ("settled RSS", "#2ca02c", num("settled_rss_mib"))]
    if len(sys.argv) > 3:
        old_xs, old = read(sys.argv[3])
        time.append(("before (dashed)", "#1f77b4", old("seconds"), old_xs))
        memory.append(("peak RSS before (dashed)", "#d62728", old("peak_rss_mib"), old_xs))
    body = panel(0, "time to all Ready", xs, time, (120, "goal at 10,000: 120 s"), "seconds")
    body += panel(WIDTH, "controller memory", xs, memory, (256, "goal at 10,000: 256 MiB"), "MiB")
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{HEIGHT}" font-family="sans-serif">',
           f'<rect width="{2 * WIDTH}" height="{HEIGHT}" fill="white"/>'] + body + ["</svg>"]
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
