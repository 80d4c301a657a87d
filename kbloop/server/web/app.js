// kbloop's page: ask with a streamed answer and its sources, rate answers, see the knowledge
// base, adapters and the latest evaluation. It uses only the public API the server documents,
// and puts text into the page with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "kbloop-api-key";
const state = { key: localStorage.getItem(KEY_STORAGE) || "", history: [] };
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// -- the API ---------------------------------------------------------------------------------

async function api(path, { method = "GET", json } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const options = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  }
  const response = await fetch(path, options);
  if (response.status === 401) $("#key-form").hidden = false;
  return response;
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function getJson(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// Server-sent events from /v1/chat/completions: yields each parsed `data:` payload.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// -- asking ----------------------------------------------------------------------------------

async function ask(question) {
  const turn = $("#turn-template").content.firstElementChild.cloneNode(true);
  $(".question", turn).textContent = question;
  $("#conversation").prepend(turn);
  const answerNode = $(".answer", turn);
  const messages = [];
  for (const [q, a] of state.history.slice(-2)) {
    messages.push({ role: "user", content: q }, { role: "assistant", content: a });
  }
  messages.push({ role: "user", content: question });

  const finish = (stateName) => { answerNode.dataset.state = stateName; progress(turn, ""); };
  progress(turn, "searching…");
  try {
    const response = await api("/v1/chat/completions", { method: "POST", json: { model: "kbloop", messages, stream: true } });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      const delta = event.choices && event.choices[0] ? event.choices[0].delta : {};
      if (event.kbloop_progress) progress(turn, `${event.kbloop_progress}…`);
      if (delta && delta.content && !event.kbloop_retraction) {
        progress(turn, "answering…");
        answerNode.textContent += delta.content;
      }
      if (event.kbloop) {
        showAnswer(turn, event.kbloop);
        state.history.push([question, event.kbloop.answer]);
      }
    }
    finish("done");
  } catch (error) {
    answerNode.textContent = `Error: ${error.message}`;
    answerNode.classList.add("error");
    finish("error");
  }
}

// What the assistant is doing while the answer is not final: searching, answering, checking.
function progress(turn, text) {
  const node = $(".progress", turn);
  node.textContent = text;
  node.hidden = !text;
}

// A follow-up as the assistant rewrote it to stand alone, or null.
const readAs = (answer) => (answer.timings && answer.timings.asked_as) || null;

function showAnswer(turn, answer) {
  $(".answer", turn).textContent = answer.answer;
  const rewrite = readAs(answer);
  if (rewrite) {
    const node = $(".read-as", turn);
    node.textContent = `read as: ${rewrite}`;
    node.hidden = false;
  }
  if (answer.refused) {
    const refusal = $(".refusal", turn);
    refusal.textContent = answer.refusal_reason;
    refusal.hidden = false;
  }
  const list = $(".sources", turn);
  const shown = answer.refused ? [] : answer.sources;
  for (const source of shown) {
    const item = element("li", null, source.cited ? "source cited" : "source");
    const button = element("button", `[${source.n}] ${source.location} (score ${source.score.toFixed(2)})`);
    button.type = "button";
    const text = element("pre", source.text, "source-text");
    text.hidden = true;
    button.addEventListener("click", () => { text.hidden = !text.hidden; });
    item.append(button, text);
    const corrected = /^correction #(\d+)$/.exec(source.path);
    if (corrected) {
      const note = element("span", "", "withdraw-state small muted");
      item.append(" ", withdrawButton(corrected[1], note, "Withdraw this correction"), " ", note);
    }
    list.append(item);
  }
  setUpFeedback(turn, answer);
}

function setUpFeedback(turn, answer) {
  const box = $(".feedback", turn);
  box.hidden = false;
  // A follow-up is rated as it was read, so that it makes a question that stands alone (an
  // evaluation item, a correction) and not "which hook does it run?".
  const question = readAs(answer) || answer.question;
  const rated = (rating) => ({
    rating, question, answer: answer.answer, refused: answer.refused,
    comment: $(".comment", box).value.trim() || null, model: answer.model, adapter: answer.adapter,
    sources: answer.sources.map(({ n, path, location, score, cited }) => ({ n, path, location, score, cited })),
  });
  for (const button of box.querySelectorAll(".thumb")) {
    button.addEventListener("click", async () => {
      const rating = button.dataset.rating;
      if (rating === "down") openCorrection(turn, button);
      const body = rated(rating);
      const note = $(".feedback-state", box);
      const response = await api("/api/feedback", { method: "POST", json: body });
      if (!response.ok) {
        note.textContent = await errorMessage(response);
        return;
      }
      box.querySelectorAll(".thumb").forEach((b) => b.classList.toggle("chosen", b === button));
      note.textContent = rating === "down" ? "Thanks: kept as a candidate for the eval set." : "Thanks.";
    });
  }
  setUpCorrection(turn, rated);
}

// Under a *Wrong* answer: a box for the right answer, which becomes a training record and an
// evaluation question. Typing one is optional; the thumbs-down is kept either way.
function openCorrection(turn, wrongButton) {
  const form = $(".correction", turn);
  if (!form.hidden) return;
  form.hidden = false;
  wrongButton.setAttribute("aria-expanded", "true");
  $(".correction-text", form).focus();
}

function setUpCorrection(turn, rated) {
  const form = $(".correction", turn);
  const text = $(".correction-text", form);
  const note = $(".correction-state", form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const correction = text.value.trim();
    if (!correction) {
      note.textContent = "Type the right answer first.";
      text.focus();
      return;
    }
    const response = await api("/api/feedback", { method: "POST", json: { ...rated("down"), correction } });
    if (!response.ok) {
      note.textContent = await errorMessage(response);
      return;
    }
    text.readOnly = true;
    $("button", form).disabled = true;
    note.textContent = "Thanks: answers to this question read it from now on, the next dataset build "
      + "learns it, and evaluations ask it.";
    const { id } = await response.json();
    const undoNote = element("span", "", "withdraw-state small muted");
    $(".row", form).append(withdrawButton(id, undoNote, "Take it back"), undoNote);
  });
}

// Takes a user's correction back (DELETE /api/feedback/ID/correction): no answer reads it and
// the next dataset build retires it; the rating stays as a thumbs-down.
function withdrawButton(id, note, label) {
  const button = element("button", label, "withdraw secondary");
  button.type = "button";
  button.addEventListener("click", async () => {
    const response = await api(`/api/feedback/${id}/correction`, { method: "DELETE" });
    if (!response.ok) {
      note.textContent = await errorMessage(response);
      return;
    }
    button.disabled = true;
    note.textContent = "Withdrawn: no answer reads it, and the next dataset build retires it.";
  });
  return button;
}

// -- the side panels ---------------------------------------------------------------------------

function definitions(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) list.append(element("dt", term), element("dd", value));
}

async function refreshStatus() {
  try {
    const info = await getJson("/api/status");
    $("#kb-summary").textContent = `${info.files_indexed} files, ${info.chunks} chunks`;
    const lastRun = info.last_runs && info.last_runs[0];
    definitions($("#status-list"), [
      ["files", info.files_indexed], ["chunks", info.chunks], ["vectors", info.vectors],
      ["failed", info.files_failed], ["embedder", info.embedder], ["generator", info.generator],
      ["daemon", info.daemon && info.daemon.running ? `running (pid ${info.daemon.pid})` : "not running"],
      ["last run", lastRun ? `${lastRun.kind} ${lastRun.status}` : "none yet"],
    ]);
    $("#failures").replaceChildren(...info.failures.map((f) => element("li", `${f.path}: ${f.reason}`)));
    if (info.ingest) showIngest(info.ingest);
  } catch (error) {
    $("#kb-summary").textContent = error.message;
  }
}

function showIngest(job) {
  const counts = job.counts;
  const text = job.state === "running" ? "ingest running…"
    : job.state === "failed" ? `ingest failed: ${job.error}`
      : `ingest done: ${counts.files_added} added, ${counts.files_changed} changed, ${counts.files_deleted} deleted, `
        + `${counts.chunks_embedded} chunks embedded`;
  $("#ingest-state").textContent = text;
  $("#ingest-button").disabled = job.state === "running";
}

async function startIngest() {
  const response = await api("/api/ingest", { method: "POST", json: {} });
  if (!response.ok) {
    $("#ingest-state").textContent = await errorMessage(response);
    return;
  }
  let job = await response.json();
  showIngest(job);
  try {
    while (job.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      job = await getJson(`/api/ingest/${job.id}`);
      showIngest(job);
    }
  } catch (error) {
    // The job is out of sight (a restarted server forgets it): say so, and let the user start another.
    $("#ingest-state").textContent = `ingest status unknown: ${error.message}`;
    $("#ingest-button").disabled = false;
  }
  refreshStatus();
}

async function refreshAdapters() {
  const box = $("#adapter-list");
  try {
    const { adapters } = await getJson("/api/adapters");
    if (!adapters.length) return;
    const table = element("table");
    for (const adapter of adapters) {
      const lineage = adapter.lineage || {};
      const parent = lineage.parent || lineage.parent_version || lineage.base_model || lineage.base || "";
      const row = table.insertRow();
      row.insertCell().textContent = adapter.version + (adapter.serving ? " (serving)" : "");
      row.insertCell().textContent = parent ? `from ${parent}` : "";
      row.insertCell().textContent = new Date(adapter.modified_at * 1000).toLocaleString();
    }
    box.classList.remove("muted");
    box.replaceChildren(table);
  } catch (error) {
    box.textContent = error.message;
  }
}

// A report's numbers, one level of nesting flattened: {"metrics": {"f1": 0.5}} -> "metrics.f1".
function scalars(report, prefix = "", depth = 0) {
  const rows = [];
  for (const [key, value] of Object.entries(report || {})) {
    const name = prefix + key;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      if (depth < 1) rows.push(...scalars(value, `${name}.`, depth + 1));
    } else if (!Array.isArray(value)) {
      rows.push([name, typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : value]);
    }
  }
  return rows;
}

async function refreshEvaluation() {
  const box = $("#eval-report");
  try {
    const { latest } = await getJson("/api/evals");
    if (!latest) return;
    const table = element("table");
    for (const [name, value] of [["run", latest.run], ...scalars(latest.report).slice(0, 40)]) {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = value;
    }
    box.classList.remove("muted");
    box.replaceChildren(table);
    const plots = $("#eval-plots");
    plots.replaceChildren();
    for (const plot of latest.plots) {
      // Fetched, not linked, so that the API key travels with the request.
      const response = await api(`/api/evals/${encodeURIComponent(latest.run)}/${encodeURIComponent(plot)}`);
      if (!response.ok) continue;
      const image = element("img");
      image.alt = plot;
      image.src = URL.createObjectURL(await response.blob());
      plots.append(image);
    }
  } catch (error) {
    box.textContent = error.message;
  }
}

function refreshPanels() {
  refreshStatus();
  refreshAdapters();
  refreshEvaluation();
}

// -- wiring ----------------------------------------------------------------------------------

$("#ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  const button = $("#ask-button");
  button.disabled = true;
  $("#question").value = "";
  try {
    await ask(question);
  } finally {
    button.disabled = false;
  }
});
$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#ask-form").requestSubmit();
  }
});
$("#new-conversation").addEventListener("click", () => {
  state.history = [];
  $("#conversation").replaceChildren();
});
$("#ingest-button").addEventListener("click", startIngest);
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem(KEY_STORAGE, state.key);
  $("#key-form").hidden = true;
  refreshPanels();
});

refreshPanels();
setInterval(refreshStatus, 15000);
