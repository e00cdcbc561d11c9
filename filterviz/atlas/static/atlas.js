// A layer page: sorts its grid of tiles, and shows one filter's detail (#filter-<n>), built on demand
// from the layer's data embedded once in the page, so that thousands of filters open at once.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("layer-data").textContent);
  const byFilter = new Map(data.filters.map((f) => [String(f.filter), f]));
  const grid = document.getElementById("grid");
  const tiles = Array.from(grid.querySelectorAll(".tile"));
  const detail = document.getElementById("detail");
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  const format = (v) => (v === null || v === undefined ? "–" : Number(v.toPrecision(3)).toString());

  // Missing figures go last in either direction; ties keep filter order.
  function sortGrid(choice) {
    const [figure, direction] = choice.split(":");
    const sign = direction === "desc" ? -1 : 1;
    const value = (tile) =>
      figure === "filter" ? Number(tile.dataset.filter) : byFilter.get(tile.dataset.filter).figures[figure] ?? null;
    const sorted = tiles.slice().sort((a, b) => {
      const va = value(a), vb = value(b);
      if ((va === null) !== (vb === null)) return va === null ? 1 : -1;
      return (va === vb || va === null ? 0 : sign * (va - vb)) || a.dataset.filter - b.dataset.filter;
    });
    grid.replaceChildren(...sorted);
    for (const tile of tiles) {
      if (figure === "filter") delete tile.dataset.value;
      else tile.dataset.value = format(value(tile));
    }
  }

  // The activation per iteration as one path, broken where a value is missing.
  function drawCurve(curve) {
    const svg = $("detail-curve");
    const [width, height, pad] = [320, 120, 6];
    const known = curve.filter((v) => v !== null);
    svg.replaceChildren();
    if (!known.length) {
      $("detail-curve-caption").textContent = "no activation curve";
      return;
    }
    const lo = Math.min(...known), hi = Math.max(...known);
    const x = (i) => pad + (i / Math.max(curve.length - 1, 1)) * (width - 2 * pad);
    const y = (v) => height - pad - ((v - lo) / (hi - lo || 1)) * (height - 2 * pad);
    let d = "", pen = "M";
    curve.forEach((v, i) => {
      if (v === null) { pen = "M"; return; }
      d += `${pen}${x(i).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = "L";
    });
    const frame = document.createElementNS(SVG, "rect");
    Object.entries({ x: 0.5, y: 0.5, width: width - 1, height: height - 1, class: "frame" })
      .forEach(([k, v]) => frame.setAttribute(k, v));
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    path.setAttribute("class", "curve");
    svg.append(frame, path);
    $("detail-curve-caption").textContent =
      `activation per iteration, ${curve.length} iterations: ${format(lo)} to ${format(hi)}`;
  }

  function show(filter) {
    const f = byFilter.get(filter);
    for (const tile of grid.querySelectorAll(".selected")) tile.classList.remove("selected");
    detail.hidden = !f;
    document.body.classList.toggle("with-detail", Boolean(f));
    if (!f) return;
    const tile = $(`tile-${filter}`);
    tile.classList.add("selected");
    tile.scrollIntoView({ block: "nearest" });
    $("detail-title").textContent = `${data.layer} · filter ${f.filter}${f.dead ? " (dead)" : ""}`;
    $("detail-picture").src = tile.querySelector("img").src;
    $("detail-picture").alt = `filter ${f.filter}`;
    $("detail-examples-figure").hidden = !f.examples;
    if (f.examples) {
      $("detail-examples").src = tile.querySelector("img.examples").src;
      $("detail-examples").alt = `dataset examples of filter ${f.filter}`;
    }
    drawCurve(f.curve);
    $("detail-figures").replaceChildren(...data.figures.map((name) => {
      const row = document.createElement("tr");
      const [th, td] = [document.createElement("th"), document.createElement("td")];
      th.textContent = name;
      td.textContent = format(f.figures[name]);
      row.append(th, td);
      return row;
    }));
    $("detail-run").hidden = !f.run_url;
    $("detail-run").href = f.run_url || "";
    $("detail-command").textContent = f.command;
    $("detail-copy").textContent = "copy";
  }

  const route = () => show((/^#filter-(\d+)$/.exec(location.hash) || [])[1]);

  function close() {
    history.replaceState(null, "", location.pathname + location.search); // "#" alone would scroll to the top
    route();
  }

  // Next or previous tile in the grid's current order.
  function step(offset) {
    const current = grid.querySelector(".selected");
    const next = current && (offset > 0 ? current.nextElementSibling : current.previousElementSibling);
    if (next) location.replace(next.getAttribute("href"));
  }

  async function copyCommand() {
    const button = $("detail-copy");
    try {
      await navigator.clipboard.writeText($("detail-command").textContent);
      button.textContent = "copied";
    } catch (e) {
      // no clipboard access: select the command, for Ctrl+C
      getSelection().selectAllChildren($("detail-command"));
      button.textContent = "press Ctrl+C";
    }
  }

  $("sort").addEventListener("change", (e) => sortGrid(e.target.value));
  $("detail-close").addEventListener("click", close);
  $("detail-copy").addEventListener("click", copyCommand);
  document.addEventListener("keydown", (e) => {
    if (detail.hidden || e.target.tagName === "SELECT") return;
    if (e.key === "Escape") close();
    else if (e.key === "ArrowRight") step(1);
    else if (e.key === "ArrowLeft") step(-1);
  });
  window.addEventListener("hashchange", route);
  if ($("sort").value !== "filter") sortGrid($("sort").value); // the choice a reload remembers
  route();
})();
