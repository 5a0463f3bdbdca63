// One version's panel in the browser: the front-end of arboris_nb.widgets.panels.PanelView.
//
// Why this file exists: streamed text must cost O(1) per token. The kernel sends each
// panel's new text as a delta on one shared channel model (one message carries the deltas
// of every panel: {t, p: {index: [gen, offset, text, tokens]}}), and this view appends it
// as a text node — model output is never parsed as HTML. `gen` counts attempts (a new one
// clears the body); `offset` (UTF-16 units already sent) lets a view that missed deltas
// (rendered mid-run, page reloaded) notice the gap and ask the kernel once for the text so
// far. The final text arrives as the synced `text` trait, so a saved notebook holds it.
// The clock of a running version ticks here, not by kernel messages.

const LIVE = new Set(["running", "retrying"]);

function make(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function seconds(s) {
  return `${s.toFixed(1)} s`;
}

export default {
  async render({ model, el, host }) {
    el.classList.add("arboris-view");
    const header = make("div", "arboris-panel-header");
    const title = make("b", "arboris-title");
    const status = make("span", "arboris-status");
    const badges = make("span", "arboris-badges");
    const line = make("div", "arboris-statsline");
    const stats = make("span", "arboris-stats");
    const clock = make("span", "arboris-clock");
    line.append(stats, clock);
    header.append(title, " ", status, badges, line);
    const body = make("div", "arboris-panel-text");
    body.setAttribute("role", "log");
    el.append(header, body);

    // What this view holds of the current attempt's streamed text.
    let gen = model.get("gen");
    let have = 0; // UTF-16 units of the attempt's text appended, in order
    let tokens = 0;
    let showingFinal = false;
    let missed = null; // while asking the kernel for missed text: the deltas seen meanwhile
    let clockBase = model.get("clock_s");
    let clockAt = performance.now();

    const live = () => LIVE.has(model.get("status"));
    const drawClock = () => {
      if (!live()) {
        clock.textContent = "";
        return;
      }
      const elapsed = clockBase + (performance.now() - clockAt) / 1000;
      const parts = [seconds(elapsed), ...(tokens ? [`${tokens} tok`] : [])];
      clock.textContent = (model.get("stats") ? " · " : "") + parts.join(" · ");
    };
    const drawHeader = () => {
      const word = model.get("status");
      title.textContent = model.get("title");
      status.textContent = word;
      status.className = `arboris-status arboris-status-${word}`;
      status.dataset.status = word;
      badges.replaceChildren(
        ...model.get("badges").map((name) => {
          const badge = make("span", "arboris-badge");
          badge.textContent = name;
          return badge;
        }),
      );
      stats.textContent = model.get("stats");
      el.classList.toggle("arboris-wide", model.get("wide"));
      drawClock();
    };
    const clear = () => {
      body.replaceChildren();
      have = 0;
      tokens = 0;
      missed = null;
      showingFinal = false;
    };
    // Follow the tail unless the reader scrolled up to read.
    const append = (text) => {
      const atEnd = body.scrollHeight - body.scrollTop - body.clientHeight < 8;
      body.append(document.createTextNode(text));
      if (atEnd) body.scrollTop = body.scrollHeight;
    };
    const extend = (offset, text) => {
      const fresh = text.slice(have - offset);
      if (offset <= have && fresh) {
        append(fresh);
        have += fresh.length;
      }
    };
    const drawBody = () => {
      body.dataset.placeholder = model.get("placeholder");
      const text = model.get("text");
      if (text) {
        body.replaceChildren(document.createTextNode(text));
        showingFinal = true;
      } else if (gen !== model.get("gen") || showingFinal) {
        gen = model.get("gen");
        clear();
      }
    };
    const onDelta = (delta, sentAt) => {
      const [g, offset, text, count] = delta;
      if (model.get("text") || g < gen) return; // the final text is shown, or stale
      if (g > gen) {
        gen = g;
        clear();
      }
      tokens = count;
      if (missed) {
        missed.push([offset, text]); // shown now, put in place when the reply comes
        append(text);
      } else if (offset > have) {
        missed = [[offset, text]]; // rendered mid-run: ask once for the text so far
        model.send({ sync: gen });
        append(`… ${text}`);
      } else {
        const first = have === 0;
        extend(offset, text);
        if (first && sentAt) body.dataset.firstTokenLagMs = String(Date.now() - sentAt);
      }
      drawClock();
    };
    const onReply = (msg) => {
      if (!msg || !Array.isArray(msg.sync) || !missed) return;
      const [g, text, count] = msg.sync;
      if (g !== gen || model.get("text")) return;
      const seen = missed;
      clear();
      extend(0, text);
      for (const [offset, piece] of seen) extend(offset, piece);
      tokens = Math.max(tokens, count);
      drawClock();
    };

    model.on("change:status change:title change:badges change:stats change:wide", drawHeader);
    model.on("change:clock_s", () => {
      clockBase = model.get("clock_s");
      clockAt = performance.now();
      drawClock();
    });
    model.on("change:text change:gen change:placeholder", drawBody);
    model.on("msg:custom", onReply);
    drawHeader();
    drawBody();

    const channel = await host.getModel(model.get("channel"));
    channel.on("msg:custom", (msg) => {
      const delta = msg && msg.p && msg.p[String(model.get("index"))];
      if (delta) onDelta(delta, msg.t);
    });
    const timer = setInterval(drawClock, 250);
    return () => clearInterval(timer);
  },
};
