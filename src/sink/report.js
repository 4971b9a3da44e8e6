// The report's gallery controls: filter by label, minimum confidence, minimum largest angular
// size and whole sources (emission not cut off at the model image's edge), sort by a field.
// The state also lives in the URL fragment
// (#label=FRII&min=0.9&las=30&whole=1&sort=confidence-desc), so a filtered view can be
// bookmarked or shared. Plain JS, no libraries.
(function () {
  "use strict";
  var gallery = document.getElementById("gallery");
  var cards = Array.prototype.slice.call(gallery.querySelectorAll(".card"));
  var label = document.getElementById("label");
  var min = document.getElementById("min");
  var minShown = document.getElementById("min-shown");
  var las = document.getElementById("las");
  var whole = document.getElementById("whole");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");

  function number(card, key) {
    var v = parseFloat(card.dataset[key]);
    return isNaN(v) ? -Infinity : v;
  }

  function compare(field, descending) {
    return function (a, b) {
      var x, y, order;
      if (field === "id") {
        x = a.dataset.id;
        y = b.dataset.id;
        order = x < y ? -1 : x > y ? 1 : 0;
      } else {
        order = number(a, field) - number(b, field);
      }
      if (order === 0) {
        order = Number(a.dataset.seq) - Number(b.dataset.seq);
      }
      return descending ? -order : order;
    };
  }

  function apply() {
    var wanted = label.value;
    var floor = parseFloat(min.value);
    // Cards without an extent (results of an older worker) stay unless a floor is set.
    var lasFloor = parseFloat(las.value) || 0;
    var parts = sort.value.split("-");
    var visible = 0;
    minShown.textContent = floor.toFixed(2);
    cards.sort(compare(parts[0], parts[1] === "desc"));
    cards.forEach(function (card) {
      var keep =
        (wanted === "all" || card.dataset.label === wanted) &&
        number(card, "confidence") >= floor &&
        (lasFloor <= 0 || number(card, "las") >= lasFloor) &&
        !(whole.checked && card.dataset.truncated === "true");
      card.hidden = !keep;
      if (keep) {
        visible += 1;
      }
      gallery.appendChild(card);
    });
    shown.textContent = visible + " of " + cards.length + " sources shown";
  }

  function offers(select, value) {
    return Array.prototype.some.call(select.options, function (option) {
      return option.value === value;
    });
  }

  function fromFragment() {
    var state = {};
    window.location.hash
      .replace(/^#/, "")
      .split("&")
      .forEach(function (pair) {
        var kv = pair.split("=");
        if (kv.length === 2) {
          state[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1]);
        }
      });
    if (state.label && offers(label, state.label)) {
      label.value = state.label;
    }
    if (state.min && !isNaN(parseFloat(state.min))) {
      min.value = state.min;
    }
    if (state.las && !isNaN(parseFloat(state.las))) {
      las.value = state.las;
    }
    whole.checked = state.whole === "1";
    if (state.sort && offers(sort, state.sort)) {
      sort.value = state.sort;
    }
  }

  function toFragment() {
    var hash =
      "#label=" + encodeURIComponent(label.value) +
      "&min=" + encodeURIComponent(min.value) +
      "&las=" + encodeURIComponent(las.value) +
      "&whole=" + (whole.checked ? "1" : "0") +
      "&sort=" + encodeURIComponent(sort.value);
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, "", hash);
    }
  }

  [label, min, las, whole, sort].forEach(function (control) {
    // A checkbox reports its change as "change" in every browser, "input" only in some.
    control.addEventListener(control === whole ? "change" : "input", function () {
      apply();
      toFragment();
    });
  });
  fromFragment();
  apply();
  document.body.dataset.js = "ready";
})();
