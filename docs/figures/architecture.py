"""Draw docs/figures/architecture.svg, the BAMF architecture (run from the repository root)."""

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {
    "p": (0.02, 0.78, "user p_u"),
    "h": (0.38, 0.92, "history h_j, j in R_u+ \\ {i}"),
    "q": (0.76, 0.78, "target item q_i"),
    "bu": (
        0.10,
        0.55,
        "bam(p_u, h, h)\nguide s_j ~ LogNormal(psi_j - sq^2/2, sq)\npsi_j = f(p_u, h_j)",
    ),
    "bi": (
        0.60,
        0.55,
        "bam(q_i, h, h)\nguide s_j ~ LogNormal(psi_j - sq^2/2, sq)\npsi_j = f(q_i, h_j)",
    ),
    "zu": (0.10, 0.33, "z_u = LN(p_u * c_u)\nc_u = sum alpha_j h_j"),
    "zi": (0.60, 0.33, "z_i = LN(q_i * c_i)\nc_i = sum alpha_j h_j"),
    "x": (0.36, 0.14, "x_ui = h^T (W (z_u * z_i) + b)"),
    "y": (0.30, 0.00, "Bernoulli(sigmoid(x)) or BPR on x_pos - x_neg"),
}
EDGES = [("p", "bu"), ("h", "bu"), ("h", "bi"), ("q", "bi"), ("bu", "zu"), ("bi", "zi"),
         ("zu", "x"), ("zi", "x"), ("x", "y")]  # fmt: skip
# p_u and q_i also enter z_u, z_i directly: drawn around the outside of the attention boxes
BYPASS = [("p", "zu", -1), ("q", "zi", 1)]


def main() -> None:
    fig = Figure(figsize=(9, 6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.02, 1.1)
    ax.set_ylim(-0.04, 1.02)
    ax.axis("off")
    centres, edges = {}, {}
    for key, (x, y, text) in BOXES.items():
        width, height = (
            0.045 + 0.0105 * max(map(len, text.split("\n"))),
            0.045 * (1 + text.count("\n")),
        )
        ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.01",
                                    fc="#e8f0fa", ec="#2b5d8c"))  # fmt: skip
        ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8)
        centres[key] = (x + width / 2, y + height / 2, height)
        edges[key] = (x, x + width)
    for a, b in EDGES:
        (xa, ya, ha), (xb, yb, hb) = centres[a], centres[b]
        start, end = (xa, ya - ha / 2 - 0.01), (xb, yb + hb / 2 + 0.01)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="#555"))
    for a, b, side in BYPASS:
        (xa, ya, ha), (xb, yb, hb) = centres[a], centres[b]
        x = -0.005 if side < 0 else 1.085
        ax.plot([xa, x, x], [ya - ha / 2, ya - ha / 2 - 0.03, yb], color="#555", lw=1)
        end = edges[b][0] - 0.012 if side < 0 else edges[b][1] + 0.012
        ax.add_patch(FancyArrowPatch((x, yb), (end, yb), arrowstyle="-|>", mutation_scale=10,
                                     color="#555"))  # fmt: skip
    ax.text(0.0, 0.46, "prior s_j ~ LogNormal(m - 1/2, 1)\nalpha = s^tau / (sum s^tau)^beta",
            fontsize=7, color="#8c2b2b")  # fmt: skip
    fig.savefig(Path("docs/figures/architecture.svg"), format="svg", bbox_inches="tight")


if __name__ == "__main__":
    main()
