// The rating page: one task at a time, every answer stored before the next task shows.
// URLs are relative to the page (<base>/r/<token>), so the page works under any reverse-proxy prefix.
"use strict";

const token = decodeURIComponent(location.pathname.split("/").pop());
const api = `../api/r/${encodeURIComponent(token)}`;
const mediaUrl = (id) => `../media/${encodeURIComponent(token)}/${id}.png`;
const $ = (id) => document.getElementById(id);

let S = null;            // the state from the server
let current = 0;         // index of the task on screen
let shownAt = 0;         // when it was shown (seconds on task)
let busy = false;        // an answer is on its way: keys and buttons wait
let introFor = null;     // the test whose instructions are on screen
let armedTimer = null;
const introSeen = new Set();
// A new task takes input only after this pause: the second click of a double click (or a held key)
// must not answer the task that replaced the one clicked.
const ARM_MS = 200;

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

function show(section) {
  for (const id of ["intro", "task", "done"]) $(id).hidden = id !== section;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function answeredCount() {
  return S.tasks.filter((t) => t.task in S.answers).length;
}

function updateProgress() {
  const done = answeredCount(), total = S.tasks.length;
  const pct = total ? Math.round((100 * done) / total) : 100;
  $("bar").style.width = `${pct}%`;
  $("progress").setAttribute("aria-valuenow", String(pct));
  $("count").textContent = `${done} / ${total}`;
}

function question(task) {
  const t = S.texts;
  if (task.kind === "pair") return task.test === "image" ? t.pair_image_question : t.pair_text_question;
  return task.test === "image" ? t.image_question : t.text_question;
}

function instructions(test) {
  const t = S.texts;
  return S.mode === "pair" ? `${test === "image" ? t.image_instructions : t.text_instructions} ${t.pair_instructions}`
                           : test === "image" ? t.image_instructions : t.text_instructions;
}

function showIntro(test) {
  introFor = test;
  $("welcome").textContent = introSeen.size === 0 ? S.texts.welcome : "";
  $("intro-title").textContent = test === "image" ? "Image quality" : "Text and image";
  $("instructions").textContent = instructions(test);
  const anchors = $("anchors");
  anchors.replaceChildren();
  for (const anchor of S.anchors[test] || []) {
    const figure = el("figure", { class: "anchor" },
      anchor.images.map((id) => el("img", { src: mediaUrl(id), alt: "example" })));
    if (anchor.text) figure.appendChild(el("blockquote", { text: anchor.text }));
    figure.appendChild(el("figcaption", { text: anchor.caption }));
    anchors.appendChild(figure);
  }
  show("intro");
  $("start").focus();
}

function panelNode(panel, task, side) {
  const cls = task.test === "image" ? "result" : "input";
  const node = el("div", { class: `panel ${task.kind}` });
  if (side) node.appendChild(el("div", { class: "side", text: side }));
  const row = el("div", { class: "images" });
  panel.images.forEach((id, n) => {
    const img = el("img", { src: mediaUrl(id), class: cls, alt: task.test === "image" ? "zoomed image"
                           : n === 0 ? "wider view" : "zoomed image" });
    row.appendChild(img);
  });
  node.appendChild(row);
  if (panel.text) node.appendChild(el("blockquote", { class: "prompt", text: panel.text }));
  return node;
}

function choiceButtons(task) {
  const box = $("choices");
  box.replaceChildren();
  const given = S.answers[task.task] || {};
  const add = (label, key, value, attr) => {
    const b = el("button", { class: "choice", "data-key": key, [attr]: String(value) }, [
      el("span", { class: "key", text: key }), el("span", { text: label })]);
    if (given.score === value || given.choice === value) b.classList.add("chosen");
    b.addEventListener("click", () => submit(value));
    box.appendChild(b);
  };
  if (task.kind === "mos") {
    for (let s = 1; s <= 5; s++) add(S.labels[s], String(s), s, "data-score");
  } else {
    add("Left is better", "\u2190", "left", "data-choice");
    if (S.unsure) add("Not sure", "\u2193", "unsure", "data-choice");
    add("Right is better", "\u2192", "right", "data-choice");
  }
}

function preload(index) {
  const task = S.tasks[index];
  if (!task) return;
  for (const panel of task.panels) for (const id of panel.images) new Image().src = mediaUrl(id);
  if (task.reference) new Image().src = mediaUrl(task.reference);
}

function render() {
  updateProgress();
  if (current >= S.tasks.length) {
    $("done-text").textContent = S.texts.done;
    show("done");
    return;
  }
  const task = S.tasks[current];
  if (!introSeen.has(task.test)) {
    showIntro(task.test);
    return;
  }
  $("question").textContent = question(task);
  const stage = $("stage");
  stage.replaceChildren();
  stage.className = `stage ${task.kind} ${task.test}`;
  if (task.kind === "pair") {
    stage.appendChild(panelNode(task.panels[0], task, "Left"));
    stage.appendChild(panelNode(task.panels[1], task, "Right"));
  } else {
    stage.appendChild(panelNode(task.panels[0], task, null));
  }
  if (task.reference) {
    stage.appendChild(el("figure", { class: "reference" }, [
      el("img", { src: mediaUrl(task.reference), alt: "low-resolution input" }),
      el("figcaption", { text: "low-resolution input" })]));
  }
  choiceButtons(task);
  $("back").disabled = current === 0;
  $("task").dataset.task = task.task;
  $("task").dataset.armed = "0";
  clearTimeout(armedTimer);
  armedTimer = setTimeout(() => { $("task").dataset.armed = "1"; }, ARM_MS);
  show("task");
  shownAt = performance.now();
  preload(current + 1);
}

function submissionId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function post(body) {
  const response = await fetch(`${api}/answer`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(data.error || `HTTP ${response.status}`);
    err.permanent = response.status >= 400 && response.status < 500;
    throw err;
  }
  return data;
}

async function submit(value) {
  if (busy || current >= S.tasks.length || $("task").dataset.armed !== "1") return;
  const task = S.tasks[current];
  busy = true;
  document.body.classList.add("busy");
  const body = { task: task.task, seconds: Math.max(0, (performance.now() - shownAt) / 1000),
                 submission: submissionId() };
  if (task.kind === "mos") body.score = value; else body.choice = value;
  for (let attempt = 0; ; attempt++) {
    try {
      const data = await post(body);  // the same submission id on a retry: stored once
      S.answers[task.task] = task.kind === "mos" ? { score: value, choice: null } : { score: null, choice: value };
      current = data.next === null ? S.tasks.length : data.next;
      status("");
      break;
    } catch (err) {
      if (err.permanent || attempt >= 4) {
        status(`Not saved: ${err.message}. Please try again.`, true);
        break;
      }
      status("Saving...");
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
  busy = false;
  document.body.classList.remove("busy");
  render();
}

function back() {
  if (busy || current === 0) return;
  current -= 1;
  render();
}

function start() {
  if (introFor === null) return;
  introSeen.add(introFor);
  introFor = null;
  render();
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey || event.repeat || !S) return;
  if (!$("intro").hidden) {
    if (event.key === "Enter") { event.preventDefault(); start(); }
    return;
  }
  if (event.key === "Backspace") { event.preventDefault(); back(); return; }
  if ($("task").hidden) return;
  const task = S.tasks[current];
  if (task.kind === "mos" && /^[1-5]$/.test(event.key)) { event.preventDefault(); submit(Number(event.key)); }
  if (task.kind === "pair") {
    const choice = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: S.unsure ? "unsure" : null }[event.key];
    if (choice) { event.preventDefault(); submit(choice); }
  }
});

$("start").addEventListener("click", start);
$("back").addEventListener("click", back);
$("done-back").addEventListener("click", back);

async function load() {
  try {
    const response = await fetch(`${api}/state`, { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    S = data;
    current = S.next === null ? S.tasks.length : S.next;  // resume where the rater stopped
    if (current >= S.tasks.length) S.tasks.forEach((t) => introSeen.add(t.test));
    else if (current > 0) introSeen.add(S.tasks[current - 1].test);  // resumed inside a block
    document.body.dataset.ready = "1";
    render();
  } catch (err) {
    status(`The study could not be loaded: ${err.message}`, true);
  }
}

load();
