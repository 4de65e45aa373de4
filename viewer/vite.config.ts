// Builds the viewer into the Python package (src/solent/viewer_dist), served at /viewer.
import { defineConfig } from 'vite';
import { bundleStats, dropUnused, lazyCodecs, readingChunks } from './slim';

export default defineConfig({
  base: '/viewer/',
  plugins: [dropUnused(), readingChunks(), ...(process.env.SOLENT_BUNDLE_STATS ? [bundleStats()] : [])],
  build: {
    outDir: '../src/solent/viewer_dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
  },
  worker: { format: 'es', plugins: () => [lazyCodecs()] },
  // The image loader's codecs are CommonJS/wasm modules that Vite's dev server must pre-bundle.
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: [
      'dicom-parser',
      '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
      '@cornerstonejs/codec-charls/decodewasmjs',
      '@cornerstonejs/codec-openjpeg/decodewasmjs',
      '@cornerstonejs/codec-openjph/wasmjs',
    ],
  },
});
