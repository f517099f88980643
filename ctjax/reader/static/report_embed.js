// The model's report in the assisted arm's frame (injected by ctjax.reader.server): the strip
// of sampled slices is cut into rows wide enough to read each thumbnail, every row with its
// own part of the attention histogram (the same SVG, its viewBox narrowed to the row's bars);
// the highlight scale sits beside its note and the key slices' controls beside their title; a click on a thumbnail, a bar or a key slice asks
// the viewer beside the frame to show that slice (postMessage {ctjax: "slice", sampled: i}).
(function () {
  "use strict";
  var MIN_THUMB_PX = 50;
  var seq = document.querySelector(".seq");
  var strip = seq && seq.querySelector(".strip");
  var svg = seq && seq.querySelector("svg.histogram");
  var ticks = seq && seq.querySelector(".ticks");
  if (strip && svg && ticks) {
    var thumbs = Array.prototype.slice.call(strip.children);
    var labels = Array.prototype.slice.call(ticks.children);
    var m = thumbs.length;
    var shown = 0;   // thumbnails per row as laid out now (0: the report's own single row)
    var layout = function () {
      var width = seq.clientWidth;
      if (width < 4 * MIN_THUMB_PX) { return; }   // not laid out yet: wait for a resize
      var rows = Math.ceil(m / Math.max(1, Math.floor(width / MIN_THUMB_PX)));
      var per = Math.ceil(m / rows);
      if (per === shown || (rows === 1 && shown === 0)) { return; }
      shown = per;
      seq.textContent = "";
      for (var start = 0; start < m; start += per) {
        var n = Math.min(per, m - start);
        var row = document.createElement("div");
        row.className = "seq-row";
        row.style.setProperty("--n", String(per));
        var s = document.createElement("div");
        s.className = "strip";
        thumbs.slice(start, start + n).forEach(function (t) { s.appendChild(t); });
        var h = svg.cloneNode(true);
        h.removeAttribute("id");
        h.setAttribute("viewBox", start + " 0 " + per + " 100");
        var k = document.createElement("div");
        k.className = "ticks";
        labels.slice(start, start + n).forEach(function (t) { k.appendChild(t); });
        row.appendChild(s);
        row.appendChild(h);
        row.appendChild(k);
        seq.appendChild(row);
      }
    };
    layout();
    window.addEventListener("resize", layout);
  }
  var scale = document.getElementById("highlight-scale");
  var note = document.getElementById("highlight-meaning");
  if (scale && note && scale.parentNode === note.parentNode) {
    var pair = document.createElement("div");
    pair.className = "scale-row";
    scale.parentNode.insertBefore(pair, scale);
    pair.appendChild(scale);
    pair.appendChild(note);
  }
  var keys = document.getElementById("key-slices");
  var controls = keys && keys.querySelector(".controls");
  var title = keys && keys.querySelector("h2");
  if (controls && title) {   // the key slices' title and controls on one line
    var head = document.createElement("div");
    head.className = "key-head";
    keys.insertBefore(head, title);
    head.appendChild(title);
    head.appendChild(controls);
  }
  document.addEventListener("click", function (e) {
    var hit = e.target.closest && e.target.closest(".thumb, rect.bar, .key-slice");
    if (hit && hit.getAttribute("data-slice") !== null) {
      window.parent.postMessage({ ctjax: "slice", sampled: +hit.getAttribute("data-slice") }, "*");
    }
  });
})();
