// Slice viewer: the case's HU (int16, little-endian [S, H, W]) windowed here, on a canvas.
// A window (level L, width W) maps HU h to clip((h - (L - W/2)) / W, 0, 1), as
// ctjax.data.windows does for the model. State is mirrored on the viewer element's data-*
// attributes (data-ready, data-slice, data-window) for tests.
(function () {
  "use strict";
  var el = document.getElementById("viewer");
  if (!el) { return; }
  var S = +el.dataset.slices, H = +el.dataset.height, W = +el.dataset.width;
  var windows = {}, names = [];
  JSON.parse(el.dataset.windows).forEach(function (w) {   // [[name, level, width], ...]
    windows[w[0]] = [w[1], w[2]];
    names.push(w[0]);
  });
  var canvas = document.getElementById("slice-canvas");
  var ctx = canvas.getContext("2d");
  var image = ctx.createImageData(W, H);
  var slider = document.getElementById("slice-slider");
  var hu = null;
  var k = Math.floor(S / 2);
  var win = el.dataset.window || names[0];

  function draw() {
    if (!hu) { return; }
    var lw = windows[win], lo = lw[0] - lw[1] / 2, scale = 255 / lw[1];
    var px = image.data, off = k * H * W;
    for (var i = 0; i < H * W; i++) {
      var v = (hu[off + i] - lo) * scale;
      v = v < 0 ? 0 : (v > 255 ? 255 : v);
      px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = v;
      px[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    document.getElementById("slice-number").textContent = String(k + 1);
    document.getElementById("window-name").textContent = win;
    slider.value = String(k + 1);
    el.dataset.slice = String(k);
    el.dataset.window = win;
    var buttons = el.querySelectorAll("button.win");
    for (var b = 0; b < buttons.length; b++) {
      buttons[b].classList.toggle("active", buttons[b].dataset.window === win);
    }
  }

  function go(next) {
    k = Math.max(0, Math.min(S - 1, next));
    draw();
  }

  function setWindow(name) {
    if (windows[name]) { win = name; draw(); }
  }

  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) { return; }
    var t = e.target && e.target.tagName;
    if (t === "INPUT" && e.target.type === "range") { return; }   // the slider handles itself
    var key = e.key, handled = true;
    if (key === "ArrowUp" || key === "k") { go(k - 1); }
    else if (key === "ArrowDown" || key === "j") { go(k + 1); }
    else if (key === "PageUp") { go(k - 5); }
    else if (key === "PageDown") { go(k + 5); }
    else if (key === "Home") { go(0); }
    else if (key === "End") { go(S - 1); }
    else if (/^[1-9]$/.test(key) && +key <= names.length) { setWindow(names[+key - 1]); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    go(k + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  slider.addEventListener("input", function () { go(+slider.value - 1); });
  var buttons = el.querySelectorAll("button.win");
  for (var b = 0; b < buttons.length; b++) {
    buttons[b].addEventListener("click", function (e) {
      setWindow(e.currentTarget.dataset.window);
      e.currentTarget.blur();
    });
  }

  // Assisted arm: a click on a slice in the report's frame shows that slice here (the frame
  // sends the sampled index; the panel holds the sampled → source map), and gives the keys back.
  var panel = document.getElementById("report-panel");
  var frame = document.getElementById("report");
  if (panel && frame) {
    var sourceOf = JSON.parse(panel.dataset.sliceIndex || "[]");
    window.addEventListener("message", function (e) {
      if (e.source !== frame.contentWindow || !e.data || e.data.ctjax !== "slice") { return; }
      var source = sourceOf[e.data.sampled];
      if (typeof source === "number") {
        go(source);
        frame.blur();
        window.focus();
      }
    });
  }

  fetch(el.dataset.src, { cache: "no-store", credentials: "same-origin" })
    .then(function (r) {
      if (!r.ok) { throw new Error("the images could not be loaded (HTTP " + r.status + ")"); }
      return r.arrayBuffer();
    })
    .then(function (buf) {
      if (buf.byteLength !== 2 * S * H * W) {
        throw new Error("the images have " + buf.byteLength + " bytes, expected " + 2 * S * H * W);
      }
      hu = new Int16Array(buf);
      document.getElementById("loading").remove();
      draw();
      el.dataset.ready = "1";
    })
    .catch(function (err) {
      document.getElementById("loading").textContent = String(err.message || err);
      el.dataset.ready = "error";
    });
})();
