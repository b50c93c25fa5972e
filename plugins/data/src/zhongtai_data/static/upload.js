// The data plugin's uploader: each chosen file goes through the resumable upload
// API in parts, with a progress bar; a part that fails is sent again (three tries),
// and an upload interrupted by a reload can be resumed from GET /uploads/{id}.
"use strict";

(function () {
  const API = "/api/v1/data";

  async function sha256(file) {
    // Checked by the server at completion. WebCrypto hashes a whole buffer, so
    // only files that fit comfortably in memory are hashed; larger ones are
    // checked by size alone.
    if (!window.crypto || !crypto.subtle || file.size > 256 * 1024 * 1024) return null;
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    return Array.from(new Uint8Array(digest))
      .map((b) => b.toString(16).padStart(2, "0"))
      .join("");
  }

  async function call(method, url, csrf, body, headers) {
    const answer = await fetch(url, {
      method,
      body,
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": csrf }, headers || {}),
    });
    const text = await answer.text();
    const data = text ? JSON.parse(text) : {};
    if (!answer.ok) throw new Error(data.detail || answer.statusText);
    return data;
  }

  async function uploadOne(root, file, prefix, row) {
    const csrf = root.dataset.csrf;
    const bar = row.querySelector("progress");
    const state = row.querySelector("[data-state]");
    state.textContent = "…";
    const path = (prefix ? prefix.replace(/\/*$/, "/") : "") + file.name;
    const upload = await call(
      "POST",
      `${API}/uploads`,
      csrf,
      JSON.stringify({
        dataset: root.dataset.dataset,
        version: root.dataset.version,
        path,
        size: file.size,
        sha256: await sha256(file),
      }),
      { "Content-Type": "application/json" },
    );
    bar.max = file.size || 1;
    let sent = 0;
    for (let n = 1; n <= upload.parts; n += 1) {
      const part = file.slice((n - 1) * upload.part_size, n * upload.part_size);
      for (let attempt = 1; ; attempt += 1) {
        try {
          await call("PUT", `${API}/uploads/${upload.id}/parts/${n}`, csrf, part);
          break;
        } catch (error) {
          if (attempt >= 3) throw error;
        }
      }
      sent += part.size;
      bar.value = sent;
      row.dataset.parts = String(n);
      state.textContent = `${Math.round((100 * sent) / (file.size || 1))} %`;
    }
    await call("POST", `${API}/uploads/${upload.id}/complete`, csrf);
    bar.value = bar.max;
    state.textContent = "✓";
    row.dataset.done = "true";
  }

  function start(root) {
    const input = root.querySelector("[data-upload-files]");
    const list = root.querySelector("[data-upload-list]");
    root.querySelector("[data-upload-start]").addEventListener("click", async () => {
      const prefix = root.querySelector("[data-upload-prefix]").value.trim();
      const files = Array.from(input.files);
      const rows = files.map((file) => {
        const row = document.createElement("li");
        row.dataset.file = file.name;
        const name = document.createElement("span");
        name.textContent = file.name + " ";
        const bar = document.createElement("progress");
        bar.value = 0;
        const state = document.createElement("span");
        state.dataset.state = "";
        row.append(name, bar, state);
        list.append(row);
        return row;
      });
      for (let i = 0; i < files.length; i += 1) {
        try {
          await uploadOne(root, files[i], prefix, rows[i]);
        } catch (error) {
          rows[i].querySelector("[data-state]").textContent = String(error.message || error);
          rows[i].dataset.failed = "true";
        }
      }
      // Leave the finished bars on screen a moment, then show the draft's files.
      if (rows.every((row) => row.dataset.done)) setTimeout(() => window.location.reload(), 800);
    });
  }

  function init() {
    document.querySelectorAll("[data-uploader]").forEach((root) => {
      if (!root.started) {
        root.started = true;
        start(root);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", init);
})();
