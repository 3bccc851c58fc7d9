"""plots: the figure of each finding, in the paper's style, drawn from its numbers.

Log axes in the paper's variables (alpha sqrt(h), h, t), one colour per width h,
a legend on every panel. Each function takes an Outcome's numbers and returns
a matplotlib Figure; `save` writes it as PNG and PDF.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

COLOURS = plt.get_cmap("viridis")


def colour(i, n):
    return COLOURS(0.15 + 0.7 * i / max(n - 1, 1))


def panels(n, title):
    fig, axes = plt.subplots(1, n, figsize=(max(4.6 * n, 8.0), 3.9), constrained_layout=True)
    fig.suptitle(title)
    return fig, np.atleast_1d(axes)


ALPHA_SQRT_H = r"$\alpha\sqrt{h}$"


def finish_axes(ax, xlabel, ylabel, logx=True, logy=False, fontsize=7):
    """Axis scales, axis labels and the legend of one panel (linear on an axis with no finite data)."""
    finite_x, finite_y = np.all(np.isfinite(ax.dataLim.get_points()), axis=0)
    ax.set_xscale("log" if logx and finite_x else "linear")
    ax.set_yscale("log" if logy and finite_y else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize)


def reference_slope(ax, x0, y0, slope, x1, label):
    """A dashed power law y = y0 (x / x0)^slope from x0 to x1."""
    xs = np.array([x0, x1])
    ax.plot(xs, y0 * (xs / x0) ** slope, "k--", lw=1, label=label)


def infinite_width_line(ax, error):
    """The test error of the h = infinity predictor (the lazy limit at infinite width): a dotted line."""
    ax.axhline(100 * error, color="black", ls=":", lw=1.2, label="h = inf (lazy limit)")


def crossover(numbers, title):
    hs, alphas = numbers["h"], numbers["alpha_sqrt_h"]
    fig, (ax_err, ax_rescaled, ax_kc, ax_star) = panels(4, title)
    for i, h in enumerate(hs):
        c = colour(i, len(hs))
        ax_err.errorbar(alphas, 100 * np.array(numbers["test_error_mean"][h]),
                        yerr=100 * np.array(numbers["test_error_std"][h]), color=c, marker="o", ms=3, capsize=2,
                        label=f"h = {h}")
        ax_rescaled.plot(alphas, numbers["rescaled_error"][h], color=c, marker="o", ms=3, label=f"h = {h}")
        ax_kc.plot(numbers["kernel_change_alphas"][h], numbers["kernel_change_mean"][h], color=c, marker="o", ms=3,
                   label=f"h = {h}")
    ax_kc.axhline(numbers["c"], color="grey", lw=0.8)
    a, kc = numbers["kernel_change_alphas"][hs[0]], numbers["kernel_change_mean"][hs[0]]
    if a[0] < 1.0:  # the sides the sweep reaches, each line above the curve's end on that side
        reference_slope(ax_kc, a[0], 3 * kc[0], -4 / 3, 1.0, "slope -4/3")
    if a[-1] > 100.0:
        reference_slope(ax_kc, a[-1], 3 * kc[-1], -1.0, 100.0, "slope -1")
    stars = np.array([numbers["alpha_star_sqrt_h"][h] / np.sqrt(h) for h in hs])
    ax_star.plot(hs, stars, "o-", label="alpha* (measured)")
    if np.all(np.isfinite(stars)):
        reference_slope(ax_star, hs[0], stars[0], -0.5, hs[-1], "h^(-1/2)")
    infinite_width_line(ax_err, numbers["h_inf_error"])
    finish_axes(ax_err, ALPHA_SQRT_H, "test error (%)")
    finish_axes(ax_rescaled, ALPHA_SQRT_H, "rescaled test error (err - min)/(max - min)")
    finish_axes(ax_kc, ALPHA_SQRT_H, r"$\|\Theta_{final} - \Theta_0\| / \|\Theta_0\|$", logy=True)
    finish_axes(ax_star, "h", r"$\alpha^*$ (kernel change = %g)" % numbers["c"], logy=True)
    return fig


def regimes(numbers, title):
    fig, (ax,) = panels(1, title)
    names = list(numbers)
    for i, name in enumerate(names):
        for j, (regime, marker) in enumerate((("feature", "s"), ("lazy", "o"))):
            errors = 100 * np.array(numbers[name][regime])
            ax.errorbar(i + (j - 0.5) * 0.25, errors.mean(), yerr=errors.std(), marker=marker, capsize=3,
                        color=colour(j, 2), label=f"{regime} end" if i == 0 else None)
            ax.plot(np.full(len(errors), i + (j - 0.5) * 0.25), errors, ".", color="grey", ms=3)
    limits = [(i, numbers[name]["h_inf"]) for i, name in enumerate(names) if "h_inf" in numbers[name]]
    if limits:
        positions, errors = zip(*limits)
        ax.plot(np.array(positions) + 0.3, 100 * np.array(errors), "k*", ms=9, label="h = inf (lazy limit)")
    finish_axes(ax, "", "test error (%)", logx=False, fontsize=8)
    ax.set_xticks(range(len(names)))  # after the scales, which reset the ticks
    ax.set_xticklabels([f"{n}\n(paper: {numbers[n]['paper']})" for n in names], fontsize=8)
    return fig


def fluctuations(numbers, title):
    hs, alphas, comparison = numbers["h"], numbers["alpha_sqrt_h"], numbers["comparison"]
    fig, (ax_hvar, ax_var, ax_ens, ax_cmp) = panels(4, title)
    for i, h in enumerate(hs):
        ax_hvar.plot(alphas, numbers["h_var"][h], color=colour(i, len(hs)), marker="o", ms=3, label=f"h = {h}")
    for j, regime in enumerate(("feature", "lazy")):
        c = colour(j, 2)
        ax_var.plot(hs, numbers["var_at_ends"][regime], "o-", color=c, label=f"{regime} end")
        ax_ens.plot(hs, 100 * np.array(numbers["ensemble_error"][regime]), "o-", color=c, label=f"ensemble, {regime}")
        ax_ens.plot(hs, 100 * np.array(numbers["single_error"][regime]), "o--", color=c, mfc="none",
                    label=f"single net, {regime}")
        ax_cmp.plot(comparison["h"], 100 * np.array(comparison["ensemble_error"][regime]), "s-", color=c,
                    label=f"ensemble, {regime}")
        ax_cmp.plot(comparison["h"], 100 * np.array(comparison["single_error"][regime]), "s--", color=c, mfc="none",
                    label=f"single net, {regime}")
    var0 = numbers["var_at_ends"]["lazy"][0]
    reference_slope(ax_var, hs[0], var0, -1.0, hs[-1], "1/h")
    finish_axes(ax_hvar, ALPHA_SQRT_H, r"$h\,\mathrm{Var}_{seeds} F$", logy=True)
    finish_axes(ax_var, "h", r"$\mathrm{Var}_{seeds} F$", logy=True)
    infinite_width_line(ax_ens, numbers["h_inf_error"])
    finish_axes(ax_ens, "h", "test error (%)")
    finish_axes(ax_cmp, "h", f"test error (%), ensembles at p = {comparison['p']}")
    return fig


def timescale(numbers, title):
    hs, alphas = numbers["h"], numbers["alpha_sqrt_h"]
    fig, (ax_loss, ax_t1, ax_growth) = panels(3, title)
    for i, a in enumerate(alphas):
        c = colour(i, len(alphas))
        t, loss = np.array(numbers["loss_curves"][a]).T
        ax_loss.plot(t[1:], loss[1:], color=c, label=f"{ALPHA_SQRT_H} = {a:g}")
        u, F = np.array(numbers["growth_curves"][a]).T
        keep = (u > 0) & (F > 0)
        ax_growth.plot(u[keep], F[keep], color=c, label=f"{ALPHA_SQRT_H} = {a:g}")
    for i, h in enumerate(hs):
        ax_t1.plot(alphas, numbers["t1_mean"][h], color=colour(i, len(hs)), marker="o", ms=3, label=f"h = {h}")
    reference_slope(ax_t1, alphas[0], numbers["t1_mean"][hs[0]][0], 1.0, 1.0, r"$t_1 \propto \alpha\sqrt{h}$")
    reference_slope(ax_growth, 1e-3, 1e-2, 1.0, 1e-1, "slope 1")
    finish_axes(ax_loss, "t", r"$\alpha^2 \mathcal{L}$ (h = %d, seed 0)" % numbers["h_shown"], logy=True, fontsize=6)
    finish_axes(ax_t1, ALPHA_SQRT_H, r"$t_1$ (loss at half its initial value)", logy=True, fontsize=6)
    finish_axes(ax_growth, r"$t / t_1$", r"$|f(w_t) - f(w_0)| / \sqrt{h}$ (RMS over training points)", logy=True,
                fontsize=6)
    return fig


def kernels(numbers, title):
    hs, alphas = numbers["h"], numbers["alpha_sqrt_h"]
    fig, axes = panels(len(hs), title)
    for ax, h in zip(axes, hs):
        for j, (kind, style) in enumerate((("network", "o-"), ("init_kernel", "s--"), ("final_kernel", "^--"))):
            ax.plot(alphas, 100 * np.array(numbers["errors"][h][kind]), style, color=colour(j, 3),
                    label=kind.replace("_", " "))
        infinite_width_line(ax, numbers["h_inf_error"])
        finish_axes(ax, ALPHA_SQRT_H, f"test error (%), h = {h}", fontsize=8)
    return fig


def save(fig, path_without_suffix):
    """Write the figure as PNG (for the README) and PDF, and close it."""
    fig.savefig(f"{path_without_suffix}.png", dpi=110)
    fig.savefig(f"{path_without_suffix}.pdf")
    plt.close(fig)
