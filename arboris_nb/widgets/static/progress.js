// The run's progress line: the front-end of arboris_nb.widgets.progress.RunProgress.
//
// A bar with one segment per outcome (ok, failed, cancelled, surplus, in flight) and the kernel's
// summary ("1 ok · 2 cancelled of 3"). While a run is live the elapsed time ticks here in
// the browser; the kernel sends an update only when a version changes state.

const SEGMENTS = ["ok", "failed", "cancelled", "surplus", "running"];

function make(tag, className) {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}

export default {
  render({ model, el }) {
    el.classList.add("arboris-progress");
    const bar = make("div", "arboris-bar");
    bar.setAttribute("role", "progressbar");
    const parts = Object.fromEntries(
      SEGMENTS.map((name) => [name, make("span", `arboris-bar-${name}`)]),
    );
    bar.append(...SEGMENTS.map((name) => parts[name]));
    const line = make("span", "arboris-line");
    const summary = make("span", "arboris-summary");
    const clock = make("span", "arboris-clock");
    const bill = make("span", "arboris-bill");
    line.append(summary, clock, bill);
    el.append(bar, line);

    let base = model.get("clock_s");
    let at = performance.now();
    const drawClock = () => {
      const live = model.get("live");
      const elapsed = base + (live ? (performance.now() - at) / 1000 : 0);
      clock.textContent = model.get("clock_s") || live ? ` · ${elapsed.toFixed(1)} s` : "";
    };
    const draw = () => {
      const counts = model.get("counts");
      const total = Math.max(1, model.get("total"));
      for (const name of SEGMENTS) parts[name].style.width = `${(100 * (counts[name] || 0)) / total}%`;
      const ended = ["ok", "failed", "cancelled", "surplus"];
      const done = ended.reduce((sum, name) => sum + (counts[name] || 0), 0);
      bar.setAttribute("aria-valuenow", String(done));
      bar.setAttribute("aria-valuemax", String(model.get("total")));
      summary.textContent = model.get("summary");
      bill.textContent = model.get("bill") ? ` · ${model.get("bill")}` : "";
      el.dataset.outcome = model.get("outcome");
      drawClock();
    };
    model.on("change:clock_s change:live", () => {
      base = model.get("clock_s");
      at = performance.now();
      drawClock();
    });
    model.on("change:counts change:total change:summary change:outcome change:bill", draw);
    draw();
    const timer = setInterval(drawClock, 250);
    return () => clearInterval(timer);
  },
};
