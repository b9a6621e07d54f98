// The 3D plant view: draws a layout's pieces with three.js (vendored), colours each by its
// device's newest anomaly score over the limit, and opens the device's page on a click.
// No inline script: the page loads this module, which reads its data URL from #scene.
import {
  BoxGeometry,
  Color,
  CylinderGeometry,
  EdgesGeometry,
  GridHelper,
  Group,
  LineBasicMaterial,
  LineSegments,
  Mesh,
  MeshBasicMaterial,
  PerspectiveCamera,
  Raycaster,
  Scene,
  Vector2,
  Vector3,
  WebGLRenderer,
} from "/static/vendor/three/three.module.min.js";

const REFRESH_MS = 5000;
const COLOURS = { ok: "#2e7d32", watch: "#f9a825", alarm: "#c62828", none: "#9aa5b1" };

// the same bands as the table on the page: below 0.8, 0.8 to 1.0, above 1.0 (an anomaly)
function band(score) {
  if (score === null || score === undefined) return "none";
  if (score > 1.0) return "alarm";
  return score >= 0.8 ? "watch" : "ok";
}

const host = document.getElementById("scene");
const renderer = new WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
host.appendChild(renderer.domElement);
const scene = new Scene();
scene.background = new Color("#f5f7fa");
const camera = new PerspectiveCamera(40, 1, 0.1, 100);
camera.position.set(0, 4.5, 9);
camera.lookAt(0, 0.6, 0);
const plant = new Group();
scene.add(plant);
scene.add(new GridHelper(10, 20, "#cbd2d9", "#e4e7eb"));

const meshes = new Map(); // piece id -> mesh
let pieces = [];

function resize() {
  const { clientWidth: w, clientHeight: h } = host;
  renderer.setSize(w, h, true);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
}

function build(doc) {
  for (const p of doc.pieces) {
    if (meshes.has(p.id)) continue;
    const [sx, sy, sz] = p.size;
    const geometry =
      p.shape === "cylinder"
        ? new CylinderGeometry(sx / 2, sz / 2, sy, 32)
        : new BoxGeometry(sx, sy, sz);
    const mesh = new Mesh(geometry, new MeshBasicMaterial({ color: COLOURS.none }));
    mesh.position.set(...p.position);
    mesh.userData = { id: p.id };
    mesh.add(new LineSegments(new EdgesGeometry(geometry), new LineBasicMaterial({ color: "#3e4c59" })));
    plant.add(mesh);
    meshes.set(p.id, mesh);
  }
}

// the table under the view says the same as the colours (and is what a keyboard or screen
// reader user reads)
function paintRow(p) {
  const row = document.querySelector(`tr[data-piece="${CSS.escape(p.id)}"]`);
  if (!row) return;
  const cells = row.querySelectorAll("td");
  cells[2].className = band(p.score);
  cells[2].textContent = p.score === null ? "no scored window" : p.score.toFixed(2);
  cells[3].textContent = p.window === null ? "-" : String(p.window);
}

function paint(doc) {
  pieces = doc.pieces;
  for (const p of doc.pieces) {
    const mesh = meshes.get(p.id);
    mesh.material.color.set(COLOURS[band(p.score)]);
    mesh.userData.utid = p.utid;
    mesh.userData.band = band(p.score);
    paintRow(p);
  }
  renderer.render(scene, camera);
}

async function refresh() {
  const r = await fetch(host.dataset.api, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`plant data: HTTP ${r.status}`);
  const doc = await r.json();
  build(doc);
  paint(doc);
  return doc;
}

// turn the plant by dragging; a press without a drag is a click on a piece
let drag = null;
renderer.domElement.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, moved: false, start: plant.rotation.y };
});
renderer.domElement.addEventListener("pointermove", (e) => {
  if (!drag) return;
  const dx = e.clientX - drag.x;
  if (Math.abs(dx) > 3) drag.moved = true;
  plant.rotation.y = drag.start + dx / 200;
  renderer.render(scene, camera);
});
renderer.domElement.addEventListener("pointerup", (e) => {
  const clicked = drag && !drag.moved;
  drag = null;
  if (!clicked) return;
  const rect = renderer.domElement.getBoundingClientRect();
  const at = new Vector2(
    ((e.clientX - rect.left) / rect.width) * 2 - 1,
    -((e.clientY - rect.top) / rect.height) * 2 + 1,
  );
  const ray = new Raycaster();
  ray.setFromCamera(at, camera);
  const hit = ray.intersectObjects([...meshes.values()], false)[0];
  if (hit && hit.object.userData.utid) {
    window.location.href = `/devices/${hit.object.userData.utid}`;
  }
});

// what tests (and curious people) can ask the view: where a piece is on screen, its colour band
window.plantView = {
  ready: false,
  refresh,
  project(id) {
    const mesh = meshes.get(id);
    const v = mesh.getWorldPosition(new Vector3()).project(camera);
    const rect = renderer.domElement.getBoundingClientRect();
    return {
      x: rect.left + ((v.x + 1) / 2) * rect.width,
      y: rect.top + ((1 - v.y) / 2) * rect.height,
    };
  },
  band(id) {
    return meshes.get(id).userData.band;
  },
  pieces() {
    return pieces.map((p) => p.id);
  },
};

resize();
window.addEventListener("resize", () => {
  resize();
  renderer.render(scene, camera);
});
refresh()
  .then(() => {
    window.plantView.ready = true;
    host.dataset.ready = "1";
  })
  .catch((err) => {
    host.dataset.error = String(err);
  });
setInterval(() => refresh().catch((err) => (host.dataset.error = String(err))), REFRESH_MS);
