// Capacity planning in the browser: a line-for-line port of reports/planning.py.
// Keep both in step (same formulas, same operation order); tests/test_report_browser.py compares them.
(function () {
  "use strict";
  var GIB = Math.pow(2, 30), TIB = Math.pow(2, 40), SECONDS_PER_DAY = 86400;
  var POSITIVE = ["dau", "events_per_user_per_day", "seq_len", "peak_qps", "candidates", "replication",
                  "zones", "node_cores", "node_dram_gib", "node_ssd_tib"];

  function PlanningError(message) { this.name = "PlanningError"; this.message = message; }
  PlanningError.prototype = Object.create(Error.prototype);

  function validate(inp) {
    POSITIVE.forEach(function (name) {
      var v = inp[name];
      if (!(typeof v === "number" && isFinite(v) && v > 0)) {
        throw new PlanningError(name + " must be a positive number, got " + v);
      }
    });
    if (!(inp.target_util > 0 && inp.target_util <= 1)) {
      throw new PlanningError("target_util must be in (0, 1], got " + inp.target_util + " (0.5 means 50%)");
    }
    if (!(isFinite(inp.ssd_headroom) && inp.ssd_headroom >= 0)) {
      throw new PlanningError("ssd_headroom must be >= 0, got " + inp.ssd_headroom + " (0.3 means 30%)");
    }
  }

  function ceilCount(x) { return Math.max(0, Math.ceil(x - 1e-9)); }

  function planStore(inp, c) {
    validate(inp);
    var users = inp.dau;
    var readsPerSZone = inp.peak_qps / inp.zones;
    var appendsPerS = users * inp.events_per_user_per_day / SECONDS_PER_DAY;
    var appendsPerSZone = appendsPerS * inp.replication;
    var cpuSPerRead = c.cpu_s_per_read * inp.seq_len / c.measured_seq_len;
    var busyCoresZone = readsPerSZone * cpuSPerRead + appendsPerSZone * c.cpu_s_per_append;
    var coresZone = c.slo_bound ? busyCoresZone : busyCoresZone / inp.target_util;
    var nodesCpu = ceilCount(coresZone / inp.node_cores);

    var indexBytesZone = c.index_bytes_per_user * users * inp.replication;
    var perNodeFixed = c.buffer_bytes_per_node + c.cache_bytes_per_node;
    var usableDram = inp.node_dram_gib * GIB - perNodeFixed;
    if (usableDram <= 0) {
      throw new PlanningError(c.store + ": a node's DRAM (" + inp.node_dram_gib + " GiB) does not even hold " +
        "the update buffer and block cache (" + (perNodeFixed / GIB).toFixed(2) + " GiB); choose nodes with more DRAM");
    }
    var nodesDram = ceilCount(indexBytesZone / usableDram);
    var ssdBytesZone = (c.bytes_per_event * inp.seq_len * users * c.space_amplification
                        * (1 + inp.ssd_headroom) * inp.replication);
    var nodesSsd = ceilCount(ssdBytesZone / (inp.node_ssd_tib * TIB));

    var nodesZone = Math.max(nodesCpu, nodesDram, nodesSsd, Math.trunc(inp.replication));
    var binding;
    if (nodesZone === nodesCpu && nodesCpu > 0) binding = "cpu";
    else if (nodesZone === nodesDram && nodesDram > 0) binding = "dram";
    else if (nodesZone === nodesSsd && nodesSsd > 0) binding = "ssd";
    else binding = "replication";
    var dramBytesZone = indexBytesZone + nodesZone * perNodeFixed;
    return {
      store: c.store, reads_per_s_zone: readsPerSZone, appends_per_s_zone: appendsPerSZone,
      busy_cores_zone: busyCoresZone, cores_zone: coresZone, nodes_cpu: nodesCpu, nodes_dram: nodesDram,
      nodes_ssd: nodesSsd, nodes_zone: nodesZone, binding: binding, dram_bytes_zone: dramBytesZone,
      ssd_bytes_zone: ssdBytesZone, nodes_total: nodesZone * inp.zones, cores_total: coresZone * inp.zones,
      dram_bytes_total: dramBytesZone * inp.zones, ssd_bytes_total: ssdBytesZone * inp.zones
    };
  }

  function planRanking(inp, cap) {
    validate(inp);
    var perDevice = cap.requests_per_s * cap.measured_candidates / inp.candidates;
    var devicesZone = ceilCount(inp.peak_qps / inp.zones / (perDevice * inp.target_util));
    return { label: cap.label, requests_per_s_per_device: perDevice, devices_zone: devicesZone,
             devices_total: devicesZone * inp.zones, seq_len: cap.seq_len, source: cap.source };
  }

  function pickRankerCapacities(caps, seqLen) {
    var best = {}, order = [];
    caps.forEach(function (cap) {
      var cur = best[cap.label];
      if (cur === undefined) { order.push(cap.label); best[cap.label] = cap; return; }
      var d = Math.abs(cap.seq_len - seqLen), dc = Math.abs(cur.seq_len - seqLen);
      if (d < dc || (d === dc && cap.seq_len > cur.seq_len)) best[cap.label] = cap;
    });
    return order.map(function (label) { return best[label]; });
  }

  function plan(inp, stores, rankers) {
    validate(inp);
    return {
      stores: stores.map(function (c) { return planStore(inp, c); }),
      rankers: pickRankerCapacities(rankers || [], inp.seq_len).map(function (r) { return planRanking(inp, r); })
    };
  }

  // ---- page glue ------------------------------------------------------------------------------
  function fmtBytes(n) {
    var units = [["TiB", TIB], ["GiB", GIB], ["MiB", Math.pow(2, 20)], ["KiB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(n) >= units[i][1]) return (n / units[i][1]).toLocaleString("en-US", {maximumFractionDigits: 2, minimumFractionDigits: 2}) + " " + units[i][0];
    }
    return Math.round(n) + " B";
  }
  function fmtNum(n) {
    if (typeof n !== "number") return String(n);
    if (Number.isInteger(n)) return n.toLocaleString("en-US");
    return n.toLocaleString("en-US", {maximumFractionDigits: Math.abs(n) < 10 ? 3 : 1});
  }
  function cell(tr, text, field, value) {
    var td = document.createElement("td");
    td.textContent = text;
    if (field) { td.setAttribute("data-field", field); td.setAttribute("data-value", String(value)); }
    tr.appendChild(td);
  }

  function readInputs(defaults) {
    var inp = {};
    Object.keys(defaults).forEach(function (k) {
      var el = document.getElementById("plan-" + k);
      inp[k] = el ? parseFloat(el.value) : defaults[k];
    });
    return inp;
  }

  function render(data) {
    var inp = readInputs(data.inputs);
    var errBox = document.getElementById("plan-error");
    var storeBody = document.getElementById("plan-stores-body");
    var rankBody = document.getElementById("plan-rankers-body");
    var result;
    try {
      result = plan(inp, data.stores, data.rankers);
      errBox.textContent = ""; errBox.hidden = true;
    } catch (e) {
      if (!(e instanceof PlanningError)) throw e;
      errBox.textContent = "Cannot plan: " + e.message; errBox.hidden = false;
      storeBody.innerHTML = ""; rankBody.innerHTML = "";
      return;
    }
    storeBody.innerHTML = "";
    result.stores.forEach(function (p) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-store", p.store);
      cell(tr, p.store);
      cell(tr, fmtNum(p.nodes_zone), "nodes_zone", p.nodes_zone);
      cell(tr, p.binding, "binding", p.binding);
      cell(tr, fmtNum(p.cores_zone), "cores_zone", p.cores_zone);
      cell(tr, fmtBytes(p.dram_bytes_zone), "dram_bytes_zone", p.dram_bytes_zone);
      cell(tr, fmtBytes(p.ssd_bytes_zone), "ssd_bytes_zone", p.ssd_bytes_zone);
      cell(tr, fmtNum(p.nodes_total), "nodes_total", p.nodes_total);
      cell(tr, fmtNum(p.cores_total), "cores_total", p.cores_total);
      cell(tr, fmtBytes(p.dram_bytes_total), "dram_bytes_total", p.dram_bytes_total);
      cell(tr, fmtBytes(p.ssd_bytes_total), "ssd_bytes_total", p.ssd_bytes_total);
      storeBody.appendChild(tr);
    });
    rankBody.innerHTML = "";
    result.rankers.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-ranker", r.label);
      cell(tr, r.label);
      cell(tr, fmtNum(r.seq_len), "seq_len", r.seq_len);
      cell(tr, fmtNum(r.requests_per_s_per_device), "requests_per_s_per_device", r.requests_per_s_per_device);
      cell(tr, fmtNum(r.devices_zone), "devices_zone", r.devices_zone);
      cell(tr, fmtNum(r.devices_total), "devices_total", r.devices_total);
      rankBody.appendChild(tr);
    });
  }

  window.storagebenchPlan = { plan: plan, planStore: planStore, planRanking: planRanking,
                              pickRankerCapacities: pickRankerCapacities, ceilCount: ceilCount,
                              PlanningError: PlanningError };

  document.addEventListener("DOMContentLoaded", function () {
    var node = document.getElementById("plan-data");
    if (!node) return;
    var data = JSON.parse(node.textContent);
    window.storagebenchPlan.data = data;
    Object.keys(data.inputs).forEach(function (k) {
      var el = document.getElementById("plan-" + k);
      if (el) el.addEventListener("input", function () { render(data); });
    });
    var reset = document.getElementById("plan-reset");
    if (reset) reset.addEventListener("click", function () {
      Object.keys(data.inputs).forEach(function (k) {
        var el = document.getElementById("plan-" + k);
        if (el) el.value = data.inputs[k];
      });
      render(data);
    });
    render(data);
  });
})();
