// Build-time trimming of the Cornerstone chunk (Vite/Rollup plugins, no dependency).
//
// Cornerstone's packages pull in code this viewer never runs, and tree-shaking cannot drop it
// because something on the import path references it (bundle analysis: `npm run stats`):
// - the image loader's index imports the whole decoder worker and every codec's JS glue into
//   the page, although decoding happens in the worker (~400 KB unminified);
// - core's surface-mesh cache class imports vtk.js's XML reader, and with it xmlbuilder2,
//   @oozcitak/* and js-yaml (~900 KB); this viewer shows stacks, never meshes;
// - vtk.js's rendering profiles register the WebGPU backend (~330 KB); Cornerstone renders
//   with WebGL (or on the CPU);
// - contour-segmentation boolean operations (clipper2-ts, ~290 KB) and the deflated Part 10
//   parser of the WADO-URI loader (pako, ~230 KB): neither is used (frames come by WADO-RS).
// Each is replaced by a module whose every export is a function that throws, so a path we
// believed unused fails loudly instead of silently.
//
// In the decoder worker, each codec is imported on first use (dynamic import per transfer
// syntax), so the worker starts with the uncompressed decoders only and a series fetches just
// the one codec it needs; `warmTask` lets the page load and initialise that codec before the
// first frame arrives.

import type { Plugin } from 'vite';

const STUB = '\0solent-unused:';

/** [module path ending, importer path ending or '' for any importer]. */
const UNUSED: [string, string][] = [
  ['dicom-image-loader/dist/esm/decodeImageFrameWorker.js', 'dicom-image-loader/dist/esm/index.js'],
  ['dicom-image-loader/dist/esm/shared/decoders/index.js', 'dicom-image-loader/dist/esm/index.js'],
  ['@kitware/vtk.js/IO/XML/XMLPolyDataReader.js', ''],
  ['@kitware/vtk.js/Rendering/WebGPU/Profiles/Volume.js', ''],
  ['@kitware/vtk.js/Rendering/WebGPU/Profiles/Geometry.js', ''],
  ['@kitware/vtk.js/Rendering/WebGPU/Profiles/All.js', ''],
  ['clipper2-ts/dist/index.js', ''],
  ['pako/dist/pako.esm.mjs', 'wadouri/parseDicomWithInflater.js'],
];

/** Page build: the unused modules above become throwing stubs. */
export function dropUnused(): Plugin {
  return {
    name: 'solent-drop-unused',
    apply: 'build',
    enforce: 'pre',
    async resolveId(source, importer, options) {
      if (!importer || source.startsWith('\0')) return null;
      const resolved = await this.resolve(source, importer, { ...options, skipSelf: true });
      if (!resolved) return null;
      const id = resolved.id.split('?')[0];
      for (const [path, from] of UNUSED) {
        if (id.endsWith(path) && (!from || importer.split('?')[0].endsWith(from))) return STUB + path;
      }
      return null;
    },
    load(id) {
      if (!id.startsWith(STUB)) return null;
      const what = JSON.stringify(id.slice(STUB.length));
      return {
        code:
          `const unavailable = function () { throw new Error(${what} + ' is not part of the Solent viewer build (viewer/slim.ts)'); };\n` +
          'export const __unused = new Proxy({}, { get: () => unavailable });\n' +
          'export default __unused;\n',
        syntheticNamedExports: '__unused',
      };
    },
  };
}

const WORKER = 'dicom-image-loader/dist/esm/decodeImageFrameWorker.js';
/** Decoders that load a codec (wasm or a large JS decoder); the rest stay static (small). */
const LAZY = [
  'decodeJPEGBaseline8Bit',
  'decodeJPEGBaseline12Bit-js',
  'decodeJPEGLossless',
  'decodeJPEGLS',
  'decodeJPEG2000',
  'decodeHTJ2K',
  'decodeDeflatedFrame',
  'decodeJPEGXL',
];
/** Transfer syntax -> decoder module, for warmTask (the worker's own switch decides decoding). */
const WARM: Record<string, string> = {
  '1.2.840.10008.1.2.4.50': 'decodeJPEGBaseline8Bit',
  '1.2.840.10008.1.2.4.51': 'decodeJPEGBaseline12Bit-js',
  '1.2.840.10008.1.2.4.57': 'decodeJPEGLossless',
  '1.2.840.10008.1.2.4.70': 'decodeJPEGLossless',
  '1.2.840.10008.1.2.4.80': 'decodeJPEGLS',
  '1.2.840.10008.1.2.4.81': 'decodeJPEGLS',
  '1.2.840.10008.1.2.4.90': 'decodeJPEG2000',
  '1.2.840.10008.1.2.4.91': 'decodeJPEG2000',
  '1.2.840.10008.1.2.4.201': 'decodeHTJ2K',
  '1.2.840.10008.1.2.4.202': 'decodeHTJ2K',
  '1.2.840.10008.1.2.4.203': 'decodeHTJ2K',
};

/** Worker build: codecs imported on first use; a warm-up task for the codecs a series needs. */
export function lazyCodecs(): Plugin {
  return {
    name: 'solent-lazy-codecs',
    apply: 'build',
    transform(code, id) {
      if (!id.split('?')[0].endsWith(WORKER)) return null;
      let out = code;
      for (const name of LAZY) {
        const from = `import ${name.replace('-js', '')} from './shared/decoders/${name}.js';`;
        if (!out.includes(from)) this.error(`${WORKER}: expected "${from}" (Cornerstone changed; update viewer/slim.ts)`);
        out = out.replace(
          from,
          `const ${name.replace('-js', '')} = (...args) => import('./shared/decoders/${name}.js').then((m) => m.default(...args));`,
        );
      }
      const table = Object.entries(WARM)
        .map(([ts, name]) => `${JSON.stringify(ts)}: () => import('./shared/decoders/${name}.js')`)
        .join(',\n  ');
      const anchor = 'const obj = {';
      if (!out.includes(anchor)) this.error(`${WORKER}: expected "${anchor}" (update viewer/slim.ts)`);
      out = out.replace(
        anchor,
        `const solentCodecs = {\n  ${table}\n};\n${anchor}\n    warmTask({ transferSyntaxes = [] } = {}) {\n` +
          '        return Promise.all(transferSyntaxes.map((ts) => solentCodecs[ts]?.().then((m) => m.initialize?.({})))).then(() => true);\n' +
          '    },',
      );
      return { code: out, map: null };
    },
  };
}

const READING = '__SOLENT_READING_CHUNKS__';
const DECODER = '__SOLENT_DECODER_FILES__';
/**
 * The entry chunk learns the file names of the reading screen's chunks (the placeholder
 * string READING in main.ts becomes a comma-separated list), so it can `modulepreload` them —
 * fetched and compiled, not run — while the worklist is idle or while a study's preview loads;
 * likewise DECODER, the decoder worker's files for the usual frame syntax.
 */
export function readingChunks(): Plugin {
  return {
    name: 'solent-reading-chunks',
    apply: 'build',
    generateBundle(_options, bundle) {
      const chunks = Object.values(bundle).filter((c) => c.type === 'chunk');
      const reading = chunks.find((c) => c.facadeModuleId?.endsWith('/src/studyview.ts'));
      if (!reading) this.error('no chunk for src/studyview.ts');
      const files = new Set<string>();
      const walk = (name: string) => {
        const c = bundle[name];
        if (!c || c.type !== 'chunk' || files.has(name)) return;
        files.add(name);
        c.imports.forEach(walk);
      };
      walk(reading.fileName);
      // The entry chunk is on the page already; file names are hashed ASCII (no comma).
      const list = [...files].filter((f) => !chunks.some((c) => c.isEntry && c.fileName === f)).join(',');
      // The decoder worker and what it loads for lossless HTJ2K (how uncompressed frames come):
      // fetched into the HTTP cache beside the chunks, so the worker starts without round trips.
      const decoder = Object.keys(bundle)
        .filter((f) => /\/(decodeImageFrameWorker|decodeHTJ2K|getPixelData)-[^/]+\.js$|\/openjphjs-[^/]+\.wasm$/.test(f))
        .join(',');
      if (!decoder.includes('decodeImageFrameWorker') || !decoder.includes('.wasm')) this.error(`decoder files not found: ${decoder}`);
      for (const c of chunks) {
        if (c.code.includes(READING)) c.code = c.code.replaceAll(READING, list);
        if (c.code.includes(DECODER)) c.code = c.code.replaceAll(DECODER, decoder);
      }
    },
  };
}

/** `npm run stats`: the largest packages in each chunk (rendered size before minification). */
export function bundleStats(): Plugin {
  return {
    name: 'solent-bundle-stats',
    apply: 'build',
    generateBundle(_options, bundle) {
      for (const c of Object.values(bundle)) {
        if (c.type !== 'chunk') continue;
        const byPackage = new Map<string, number>();
        for (const [id, m] of Object.entries(c.modules)) {
          const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(id)?.[1] ?? 'viewer/src';
          byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + m.renderedLength);
        }
        const total = [...byPackage.values()].reduce((a, b) => a + b, 0);
        const top = [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 8);
        console.log(`${c.fileName}: ${(total / 1024).toFixed(0)} KB`);
        for (const [pkg, n] of top) console.log(`  ${(n / 1024).toFixed(0).padStart(6)} KB  ${pkg}`);
      }
    },
  };
}
