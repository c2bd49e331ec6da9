// The status page: one EventSource, and the DOM updated in place (no page reloads).
"use strict";

const main = document.getElementById("sources");
const connection = document.getElementById("connection");
const viewer = document.getElementById("viewer");
const banner = document.getElementById("banner");
const notice = document.getElementById("notice");
const TOKEN_KEY = "stylebox-token";
const LOST_AFTER = 3000; // ms without a stream: more than a reconnect takes (its retry is 2 s)
const lossShown = new Map(); // job id -> step and width its drawn curve shows
let skew = 0; // the daemon's clock minus ours, in seconds: ages are counted on its clock
let lostSince = null; // when the daemon stopped answering, while it does not
let lostTimer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 10) return `${value.toFixed(1)} s`;  // a quick job is not "0 s"
  if (value < 90) return `${Math.round(value)} s`;
  return `${Math.round(value / 60)} min`;
}

function daemonNow() {
  return Date.now() / 1000 + skew;
}

function duration(value) { // a wait: whole seconds, then minutes, then hours
  value = Math.max(0, value);
  if (value < 90) return `${Math.floor(value)} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${Math.round(value / 3600)} h`;
}

function section(key) {
  const id = `source-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  let node = document.getElementById(id);
  if (!node) {
    node = el("section", { id, class: "source" },
      el("h2", { text: key }), el("div", { class: "counts" }),
      part(`${id}-running`, "running", el("div", { class: "running" })),
      part(`${id}-queued`, "queued", el("ul", { class: "queued" }), el("p", { class: "queued-more" })),
      part(`${id}-done`, "latest results", el("div", { class: "gallery" }), el("p", { class: "results-more" })),
      part(`${id}-failed`, "failed", el("ul", { class: "failed" }), el("p", { class: "failed-more" })),
      part(`${id}-alone`, "left alone in the inbox", el("ul", { class: "left-alone" }), el("p", { class: "left-alone-more" })),
      part(`${id}-aside`, "set aside: already done", el("ul", { class: "set-aside" }), el("p", { class: "set-aside-more" })));
    main.append(node);
  }
  return node;
}

// A heading and what it heads, shown only while that holds something; its count links to it
// (on a phone the failures are far down, below the gallery).
function part(id, title, ...contents) {
  return el("div", { id, class: "part", hidden: "" }, el("h3", { text: title }), ...contents);
}

function showParts(node) {
  for (const block of node.querySelectorAll(".part")) {
    block.hidden = ![...block.children].some((child) => child.tagName !== "H3" && child.childNodes.length);
  }
}

const STATES = ["queued", "running", "done", "failed"];

// The pills are made once and changed in place: one made anew each second took the
// keyboard's focus with it.
function renderCounts(node, entry) {
  const counts = node.querySelector(".counts");
  if (!counts.children.length) {
    counts.append(...STATES.map((state) => el("a", {}, el("span", { class: `count-${state}` }))));
  }
  STATES.forEach((state, index) => {
    const link = counts.children[index];
    const text = `${entry[state]} ${state}`;
    if (link.textContent !== text) link.firstChild.textContent = text;
    // A link only to what is shown: none to an empty part.
    if (entry[state]) link.setAttribute("href", `#${node.id}-${state}`);
    else link.removeAttribute("href");
  });
}

// Nothing counts down while the daemon is not answering: its last step, marked as such.
function runningText(job) {
  const step = job.step !== null && job.total ? `step ${job.step} / ${job.total}` : "starting";
  if (lostSince) return `${job.file}: ${step} · last known`;
  const eta = job.writing ? " · writing the result"
    : job.eta_seconds !== null ? ` · about ${seconds(job.eta_seconds)} left` : "";
  const rate = job.steps_per_second ? ` · ${job.steps_per_second.toFixed(1)} steps/s` : "";
  return `${job.file}: ${step}${eta}${rate}`;
}

function renderRunning(node, entry, actions) {
  const list = node.querySelector(".running");
  // Shown before the cards are measured: a hidden card is 0 px wide.
  if (entry.running_jobs.length) list.closest(".part").hidden = false;
  const keep = new Set();
  for (const job of entry.running_jobs) {
    const id = `job-${job.job}`;
    keep.add(id);
    let card = document.getElementById(id);
    if (!card) {
      card = el("article", { id, class: "job", "data-job": job.job },
        el("img", { class: "snapshot", alt: `latest snapshot of ${job.file}` }),
        el("div", { class: "meta" }), el("progress", { max: 1, value: 0 }),
        el("div", { class: "loss" }));
      if (actions) {
        const button = el("button", { type: "button", class: "cancel", text: "cancel" });
        // A running job's work is more than a click's worth: asked first.
        button.addEventListener("click", () => {
          const { file, step, total } = card.job;
          const where = step && total ? ` at step ${step} / ${total}` : "";
          if (confirm(`Cancel ${file}, running${where}? It ends as failed; retry queues it again.`)) {
            act(job.job, "cancel", button);
          }
        });
        card.append(button);
      }
      list.append(card);
    }
    card.job = job;
    const img = card.querySelector("img.snapshot");
    if (job.snapshot && img.getAttribute("src") !== job.snapshot) img.setAttribute("src", job.snapshot);
    card.querySelector(".meta").textContent = runningText(job);
    if (job.total) {
      const bar = card.querySelector("progress");
      bar.max = job.total;
      bar.value = job.step || 0;
    }
    const box = card.querySelector(".loss");
    // Drawn at the card's own width, so its text is not scaled down to a few pixels.
    const width = Math.round(box.clientWidth) || 640;
    // Drawn up to the step the card says (job.loss: only a job whose history has a loss).
    if (job.loss && job.step !== null && lossShown.get(job.job) !== `${job.step}@${width}`) {
      lossShown.set(job.job, `${job.step}@${width}`);
      // The SVG is drawn by the daemon from numbers alone; inline so it fits the card.
      fetch(`${job.loss}?step=${job.step}&width=${width}`).then((r) => (r.ok ? r.text() : null))
        .then((svg) => { if (svg) box.innerHTML = svg; }).catch(() => {});
    }
  }
  for (const card of [...list.children]) {
    if (keep.has(card.id)) continue;
    lossShown.delete(Number(card.dataset.job));
    card.remove();
  }
}

function queuedText(job) {
  const again = job.retry_at && `tried again in ${duration(job.retry_at - daemonNow())}`;
  const wait = !job.retry_at ? `queued ${duration(daemonNow() - job.queued_at)} ago`
    : job.reason ? `waiting: ${job.reason} (${again})` : again;
  return `${job.position}. ${job.file} · ${wait}`;
}

function renderQueued(node, entry, actions) {
  const list = node.querySelector(".queued");
  const more = entry.queued - entry.queued_jobs.length;
  node.querySelector(".queued-more").textContent = more > 0 ? `and ${more} more` : "";
  // Rebuilt only when the queue changes: a rebuild under the pointer would lose a click.
  const ids = entry.queued_jobs.map((q) => `${q.job}:${q.retry_at}`).join(",") + `/${actions}`;
  if (list.dataset.ids === ids) return;
  list.dataset.ids = ids;
  rebuild(list, entry.queued_jobs.map((q) => {
    const item = el("li", { "data-job": q.job }, el("span", { class: "age", text: queuedText(q) }));
    item.job = q;
    if (actions) {
      const button = el("button", { type: "button", class: "cancel", text: "cancel", "data-key": `cancel-${q.job}` });
      button.addEventListener("click", () => act(q.job, "cancel", button));
      item.append(" ", button);
    }
    return item;
  }));
}

function refreshAges() {
  for (const item of document.querySelectorAll(".queued li")) {
    item.querySelector(".age").textContent = queuedText(item.job);
  }
}

function renderResults(node, entry) {
  const gallery = node.querySelector(".gallery");
  const shown = entry.results.length;
  const where = entry.outbox ? `; all are in ${entry.outbox}` : "";
  node.querySelector(".results-more").textContent = shown && entry.done > shown
    ? `showing the latest ${shown} of ${entry.done}${where}` : "";
  const ids = entry.results.map((r) => `result-${r.job}${r.input ? "" : "-moved"}`).join(",");
  if (gallery.dataset.ids === ids) return; // unchanged: leave loaded images alone
  gallery.dataset.ids = ids;
  rebuild(gallery, entry.results.map((r) => {
    // Each a button, so that the keyboard opens the viewer too.
    const photo = r.input
      ? el("button", { type: "button", class: "open", "data-key": `photo-${r.job}` },
        el("img", { src: r.input, alt: `photo ${r.file}`, loading: "lazy", "data-full": r.input }))
      : el("div", { class: "moved", text: "photo moved away" }); // tidied out of processed/
    // A preview in the tile (a result may be 80 MB); the full result a click away, in the viewer.
    const result = el("button", { type: "button", class: "open", "data-key": `result-${r.job}` },
      el("img", { src: r.preview || r.result, alt: `result ${r.file}`, loading: "lazy", "data-full": r.result }));
    const links = el("div", { class: "links" }, el("span", { text: `${r.file} · ${seconds(r.seconds)} ` }));
    if (r.animation) links.append(el("a", { href: r.animation, target: "_blank", text: "GIF", "data-key": `gif-${r.job}` }), " ");
    if (r.loss) links.append(el("a", { href: r.loss, target: "_blank", text: "loss", "data-key": `loss-${r.job}` }));
    return el("figure", { id: `result-${r.job}`, class: "result" }, el("div", { class: "pair" }, photo, result), links);
  }));
}

function renderFailed(node, entry, actions) {
  const list = node.querySelector(".failed");
  const more = entry.failed - entry.failed_jobs.length;
  node.querySelector(".failed-more").textContent = more > 0 ? `and ${more} earlier` : "";
  const ids = entry.failed_jobs.map((f) => `${f.job}:${f.error}`).join("\n") + `/${actions}`;
  if (list.dataset.ids === ids) return; // unchanged: a rebuild under the pointer loses a click
  list.dataset.ids = ids;
  rebuild(list, entry.failed_jobs.map((f) => {
    const cancelled = (f.error || "").startsWith("Cancelled:");
    const item = el("li", { id: `failed-${f.job}` }, el("b", { text: f.file }), ": ",
      el("span", { class: cancelled ? "reason cancelled" : "reason", text: f.error || "unknown" }));
    // Bad input (or a photo replaced by another job's): another try would fail the same way.
    if (f.no_retry) {
      item.append(" ", el("span", { class: "no-retry", text: `(${f.no_retry}: a retry cannot help)` }));
    } else if (actions) {
      const button = el("button", { type: "button", class: "retry", text: "retry", "data-key": `retry-${f.job}` });
      button.addEventListener("click", () => act(f.job, "retry", button));
      item.append(" ", button);
    }
    return item;
  }));
}

// What no job takes (a folder, a mask without its photo, a copy waiting for its bytes' job),
// and the duplicates of done photos moved to processed/ since the daemon started: else they
// wait there, or vanish from the inbox, unseen.
function renderLeftAlone(node, entry) {
  renderLines(node.querySelector(".left-alone"), entry.left_alone,
    node.querySelector(".left-alone-more"), entry.left_alone_count, "more");
}

function renderSetAside(node, entry) {
  renderLines(node.querySelector(".set-aside"), entry.set_aside,
    node.querySelector(".set-aside-more"), entry.set_aside_count, "earlier");
}

// A list of lines, rebuilt only when they change, and how many more there are beyond them.
function renderLines(list, lines, moreNode, count, more) {
  moreNode.textContent = count > lines.length ? `and ${count - lines.length} ${more}` : "";
  const said = lines.join("\n");
  if (list.dataset.said === said) return;
  list.dataset.said = said;
  list.replaceChildren(...lines.map((why) => el("li", { text: why })));
}

// In the report's order: an inbox a reload adds takes its place among the others, as it
// would in a page loaded afresh.
function order(keys) {
  const nodes = keys.map(section);
  let before = null;
  for (const node of nodes) { // only a misplaced one moves (and loses focus)
    const wanted = before ? before.nextElementSibling : main.firstElementChild;
    if (node !== wanted) main.insertBefore(node, wanted);
    before = node;
  }
  for (const node of [...main.querySelectorAll(":scope > section.source")]) {
    if (!nodes.includes(node)) node.remove();
  }
}

// A list made anew keeps the keyboard's focus on the control it was on (found again by
// its data-key), where that control is still there.
function rebuild(list, children) {
  const focused = list.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  list.replaceChildren(...children);
  if (focused) list.querySelector(`[data-key="${focused}"]`)?.focus();
}

// A time of the daemon's: HH:MM:SS today, with its date on another day.
function when(epoch) {
  const date = new Date(epoch * 1000);
  const clock = date.toTimeString().slice(0, 8);
  if (date.toDateString() === new Date().toDateString()) return clock;
  const day = `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
  return `${day} ${clock}`;
}

// What keeps the daemon from serving its config file as it is (a plugin that cannot load,
// an inbox folder gone, a reload refused): said at the top for as long as it holds.
function renderProblems(problems) {
  const part = document.getElementById("problems");
  const said = JSON.stringify(problems);
  if (part.dataset.said === said) return;
  part.dataset.said = said;
  part.hidden = problems.length === 0;
  part.querySelector("ul").replaceChildren(...problems.map((problem) => {
    const since = problem.since === null ? "" : ` (at ${when(problem.since)})`;
    return el("li", { text: problem.text + since, "data-kind": problem.kind });
  }));
}

function render(report) {
  renderProblems(report.problems);
  order(Object.keys(report.sources));
  for (const [key, entry] of Object.entries(report.sources)) {
    const node = section(key);
    renderCounts(node, entry);
    renderRunning(node, entry, report.actions);
    renderQueued(node, entry, report.actions);
    renderResults(node, entry);
    renderFailed(node, entry, report.actions);
    renderLeftAlone(node, entry);
    renderSetAside(node, entry);
    showParts(node);
  }
}

function notify(text) {
  notice.querySelector("span").textContent = text;
  notice.hidden = false;
}

// Every failure says what it was in the page: a refusal, or no daemon to ask.
async function act(job, action, button) {
  const untold = `Did not ${action} job ${job}: no token given.`;
  let token = localStorage.getItem(TOKEN_KEY) || prompt("The [http] token from the daemon's config:");
  if (!token) {
    notify(untold);
    return;
  }
  if (button) button.disabled = true; // one click, one request
  try {
    for (let asked = false; ; asked = true) {
      const response = await fetch(`/api/jobs/${job}/${action}`,
        { method: "POST", headers: { "X-Stylebox-Token": token } });
      const body = await response.json().catch(() => ({})); // a proxy's error page, say
      if (response.status === 403 && body.ask_token) {
        localStorage.removeItem(TOKEN_KEY);
        if (!asked) { // changed by a reload (SIGHUP): asked for now, and the action tried again
          token = prompt("The token was refused. The [http] token from the daemon's config:");
          if (token) continue;
          notify(untold);
          return;
        }
      } else if (response.status !== 403) {
        localStorage.setItem(TOKEN_KEY, token);
      }
      if (!response.ok) {
        notify(`Could not ${action} job ${job}: ${body.error || `${response.status} ${response.statusText}`}`);
      }
      return;
    }
  } catch (error) {
    notify(`Could not ${action} job ${job}: the daemon is not answering (${error.message}).`);
  } finally {
    if (button) button.disabled = lostSince !== null;
  }
}

// While the daemon does not answer, the page says so, marks what it shows as the last known
// state (no live figures) and offers no action.
function setLost(lost, since = new Date()) {
  clearTimeout(lostTimer);
  lostTimer = null;
  if (lost === (lostSince !== null)) return;
  lostSince = lost ? since : null;
  banner.hidden = !lost;
  if (lost) {
    const clock = lostSince.toTimeString().slice(0, 8); // HH:MM:SS, local
    banner.textContent = `The daemon is not answering since ${clock}; showing the last known state.`;
  }
  for (const card of document.querySelectorAll("article.job")) {
    card.classList.toggle("stale", lost);
    if (card.job) card.querySelector(".meta").textContent = runningText(card.job);
  }
  // The viewer still shows what the browser holds.
  for (const button of main.querySelectorAll("button:not(.open)")) button.disabled = lost;
}

main.addEventListener("click", (event) => {
  const opener = event.target.closest("button.open");
  const full = opener && opener.querySelector("img").dataset.full;
  if (!full) return;
  const image = document.getElementById("full");
  if (image.getAttribute("src") !== full) {
    image.removeAttribute("src"); // not the last picture, at this one's shape
    image.src = full;
  }
  viewer.showModal();
});
// The picture's shape, for the CSS that fits it to the screen (see style.css).
document.getElementById("full").addEventListener("load", (event) => {
  const image = event.target;
  image.style.setProperty("--ratio", image.naturalWidth / image.naturalHeight);
});
document.getElementById("close").addEventListener("click", () => viewer.close());
document.getElementById("dismiss").addEventListener("click", () => { notice.hidden = true; });
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });

// Live only once a report comes: a stopping daemon still opens the stream, and ends it at once.
function connect() {
  const events = new EventSource("/events");
  events.onmessage = (message) => {
    const report = JSON.parse(message.data);
    skew = report.time - Date.now() / 1000;
    connection.textContent = "live";
    connection.className = "online";
    setLost(false);
    render(report);
  };
  events.onerror = () => {
    connection.textContent = "reconnecting…";
    connection.className = "offline";
    if (lostSince === null && lostTimer === null) {
      const since = new Date(); // the first error, not the end of the wait
      lostTimer = setTimeout(() => setLost(true, since), LOST_AFTER);
    }
    // The browser gives up on a stream answered with an error (a proxy's 502): try again.
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, LOST_AFTER);
  };
}
connect();
setInterval(refreshAges, 5000); // the stream is quiet while nothing changes
