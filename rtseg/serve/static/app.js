"use strict";
// rtseg serve page. Frames go to /ws one at a time: the next frame is grabbed only when the previous result
// is back, so the server sets the pace and camera frames shown meanwhile are dropped, never queued.
// Results are indexed label PNGs; the page draws them over the frame they belong to with the chosen opacity
// (the same blend as rtseg predict --overlay), so changing the opacity needs no new request.
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_SIDE = 640; // longest side of a sent video / camera frame (bandwidth; the model resizes anyway)
  const FPS_WINDOW_MS = 2000;
  const stats = { frames: 0, dropped: 0, fps: 0, latencyMs: null, inferenceMs: null, errors: 0, shares: null,
                  lastError: null, source: null };
  window.rtsegStats = stats; // read by tests and handy in the console

  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const grab = document.createElement("canvas");
  const gctx = grab.getContext("2d");
  let health = null;
  let ws = null;
  let wsReady = null;
  let source = null; // {kind: "image" | "video" | "camera", file?, el?, stream?, url?}
  let inFlight = null; // {id, sentAt, bitmap}
  let capturing = false;
  let pendingMeta = null;
  let nextId = 1;
  let last = null; // {frame, labels}: ImageBitmaps of the newest result
  let doneTimes = [];
  let presented = 0;
  let sent = 0;

  function setStatus(text, error = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", error);
  }

  async function init() {
    try {
      const r = await fetch("/health");
      health = await r.json();
    } catch (e) {
      setStatus(`cannot reach the server (${e.message})`, true);
      return;
    }
    const size = health.input_size ? health.input_size.join("×") : "native size";
    $("model").textContent = `${health.model} · ${health.backend}/${health.precision} · input ${size} · rtseg ${health.version}`;
    const ul = $("legend");
    health.classes.forEach((name, i) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${health.palette[i].join(",")})`;
      const label = document.createElement("span");
      label.textContent = name;
      const share = document.createElement("span");
      share.className = "share";
      share.id = `share-${i}`;
      li.append(swatch, label, share);
      ul.append(li);
    });
  }

  function connect() {
    if (ws && ws.readyState <= WebSocket.OPEN) return wsReady;
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.binaryType = "blob";
    wsReady = new Promise((resolve, reject) => {
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error("WebSocket connection failed"));
    });
    ws.onmessage = onMessage;
    ws.onclose = () => {
      if (inFlight) inFlight.bitmap.close();
      inFlight = null;
      pendingMeta = null;
      if (source && source.kind !== "image") setStatus("connection to the server closed; press a source again", true);
    };
    return wsReady;
  }

  function onMessage(ev) {
    if (typeof ev.data === "string") {
      const meta = JSON.parse(ev.data);
      if (meta.error) onError(meta);
      else pendingMeta = meta;
      return;
    }
    const meta = pendingMeta;
    const job = inFlight;
    pendingMeta = null;
    if (!meta || !job || meta.id !== job.id) return; // a result for a frame of a stopped source
    createImageBitmap(ev.data)
      .then((labels) => show(job, meta, labels))
      .catch((e) => onError({ id: job.id, error: `cannot decode the labels (${e.message})` }));
  }

  function onError(meta) {
    const job = inFlight;
    if (job && meta.id !== null && meta.id !== job.id) return;
    if (job) job.bitmap.close();
    inFlight = null;
    stats.errors++;
    stats.lastError = meta.error;
    if (meta.busy) {
      setStatus("server busy, retrying…");
      setTimeout(pump, 250);
      return;
    }
    setStatus(meta.error, true);
    if (source && source.kind !== "image") setTimeout(pump, 500);
  }

  function show(job, meta, labels) {
    inFlight = null;
    const now = performance.now();
    stats.frames++;
    stats.latencyMs = now - job.sentAt;
    stats.inferenceMs = meta.timings_ms.inference;
    stats.shares = meta.shares;
    doneTimes.push(now);
    while (doneTimes.length > 2 && now - doneTimes[0] > FPS_WINDOW_MS) doneTimes.shift();
    stats.fps = doneTimes.length > 1 ? ((doneTimes.length - 1) * 1000) / (now - doneTimes[0]) : 0;
    if (last) {
      last.frame.close();
      last.labels.close();
    }
    last = { frame: job.bitmap, labels };
    render();
    updateStats();
    if (!source) return;
    if (source.kind === "image") {
      setStatus(`${source.file.name}: ${meta.width}×${meta.height}, ${stats.latencyMs.toFixed(0)} ms`);
    } else {
      setStatus(`${source.kind === "camera" ? "webcam" : source.file.name}: live`);
      pump();
    }
  }

  function render() {
    if (!last) return;
    if (canvas.width !== last.frame.width || canvas.height !== last.frame.height) {
      canvas.width = last.frame.width;
      canvas.height = last.frame.height;
    }
    ctx.globalAlpha = 1;
    ctx.drawImage(last.frame, 0, 0);
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(last.labels, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }

  function updateStats() {
    $("fps").textContent = stats.frames > 1 ? stats.fps.toFixed(1) : "–";
    $("latency").textContent = stats.latencyMs === null ? "–" : stats.latencyMs.toFixed(0);
    $("inference").textContent = stats.inferenceMs === null ? "–" : stats.inferenceMs.toFixed(0);
    $("frames").textContent = String(stats.frames);
    $("dropped").textContent = source && source.kind !== "image" && source.el.requestVideoFrameCallback
      ? String(stats.dropped) : "–";
    (stats.shares || []).forEach((s, i) => {
      const el = $(`share-${i}`);
      if (el) el.textContent = `${(100 * s).toFixed(1)} %`;
    });
  }

  async function capture(s) {
    if (s.kind === "image") return [await createImageBitmap(s.file), await s.file.arrayBuffer()];
    const v = s.el;
    if (v.readyState < 2 || !v.videoWidth) return null; // no frame yet
    const k = Math.min(1, MAX_SIDE / Math.max(v.videoWidth, v.videoHeight));
    grab.width = Math.round(v.videoWidth * k);
    grab.height = Math.round(v.videoHeight * k);
    gctx.drawImage(v, 0, 0, grab.width, grab.height);
    const bitmap = await createImageBitmap(grab);
    const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.9));
    return [bitmap, await blob.arrayBuffer()];
  }

  async function pump() {
    if (!source || inFlight || capturing) return;
    const s = source;
    capturing = true;
    let got = null;
    try {
      got = await capture(s);
      if (got) await connect();
    } catch (e) {
      setStatus(`cannot send the frame (${e.message})`, true);
      if (got) got[0].close();
      got = null;
      if (s.kind !== "image") setTimeout(pump, 1000);
      return;
    } finally {
      capturing = false;
    }
    if (!got) {
      setTimeout(pump, 30);
      return;
    }
    const [bitmap, payload] = got;
    if (source !== s || ws.readyState !== WebSocket.OPEN) {
      bitmap.close();
      return;
    }
    const id = nextId++;
    const msg = new Uint8Array(4 + payload.byteLength);
    new DataView(msg.buffer).setUint32(0, id);
    msg.set(new Uint8Array(payload), 4);
    inFlight = { id, sentAt: performance.now(), bitmap };
    sent++;
    ws.send(msg);
  }

  function countPresented(s) {
    // frames the video element showed: those not sent are the dropped ones
    if (!s.el.requestVideoFrameCallback) return;
    const tick = () => {
      if (source !== s) return;
      presented++;
      stats.dropped = Math.max(0, presented - sent);
      s.el.requestVideoFrameCallback(tick);
    };
    s.el.requestVideoFrameCallback(tick);
  }

  function stop() {
    const s = source;
    source = null;
    stats.source = null;
    $("stop-button").disabled = true;
    if (inFlight) inFlight.bitmap.close(); // its result, when it comes, belongs to no source: ignored
    inFlight = null;
    pendingMeta = null;
    if (!s) return;
    if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
    if (s.el) {
      s.el.pause();
      s.el.srcObject = null;
      s.el.removeAttribute("src");
      s.el.load();
    }
    if (s.url) URL.revokeObjectURL(s.url);
  }

  function begin(s) {
    source = s;
    stats.source = s.kind;
    stats.frames = 0;
    stats.dropped = 0;
    stats.fps = 0;
    doneTimes = [];
    presented = 0;
    sent = 0;
    $("stop-button").disabled = s.kind === "image";
    if (s.el) countPresented(s);
    setStatus(s.kind === "image" ? `segmenting ${s.file.name}…` : "starting…");
    updateStats();
    pump();
  }

  async function startImage(file) {
    stop();
    begin({ kind: "image", file });
  }

  async function startVideo(file) {
    stop();
    const v = $("video");
    const s = { kind: "video", file, el: v, url: URL.createObjectURL(file) };
    v.srcObject = null;
    v.src = s.url;
    v.loop = true;
    try {
      await v.play();
    } catch (e) {
      URL.revokeObjectURL(s.url);
      setStatus(`cannot play ${file.name} in this browser (${e.message})`, true);
      return;
    }
    begin(s);
  }

  async function startCamera() {
    stop();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("the webcam needs a secure page: open it on localhost / 127.0.0.1 or over https", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    } catch (e) {
      setStatus(`no webcam (${e.name}: ${e.message})`, true);
      return;
    }
    const v = $("video");
    v.removeAttribute("src");
    v.srcObject = stream;
    const s = { kind: "camera", el: v, stream };
    try {
      await v.play();
    } catch (e) {
      stream.getTracks().forEach((t) => t.stop());
      setStatus(`cannot show the webcam (${e.message})`, true);
      return;
    }
    begin(s);
  }

  $("image-input").addEventListener("change", (e) => {
    if (e.target.files[0]) startImage(e.target.files[0]);
    e.target.value = "";
  });
  $("video-input").addEventListener("change", (e) => {
    if (e.target.files[0]) startVideo(e.target.files[0]);
    e.target.value = "";
  });
  $("image-button").addEventListener("click", () => $("image-input").click());
  $("video-button").addEventListener("click", () => $("video-input").click());
  $("camera-button").addEventListener("click", startCamera);
  $("stop-button").addEventListener("click", () => {
    stop();
    setStatus(`stopped after ${stats.frames} frames`);
  });
  $("opacity").addEventListener("input", (e) => {
    $("opacity-value").textContent = Number(e.target.value).toFixed(2);
    render();
  });
  init();
})();
